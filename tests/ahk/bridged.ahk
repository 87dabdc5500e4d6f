#Requires AutoHotkey v2.0
; Run by AHKBridge in tests/test_ahk_bridge.py: talks to the broker through its
; standard streams.
#SingleInstance Off
#Include ..\..\clients\ahk\MessageBroker.ahk
OnError((error, *) => (FileAppend("error: " error.Message "`n", "**", "UTF-8"), ExitApp(3)))

broker := BridgedBroker()
broker.Subscribe(["bridged.in", "bridged.svc"])
args := []
for arg in A_Args
    args.Push(arg)
broker.Publish("bridged.ready", Map("args", args))

msg := broker.Receive()
text := msg.Payload["text"]
broker.Publish("bridged.out", Map("text", text, "length", StrLen(text)))

msg := broker.Receive()
broker.Reply(msg, Map("doubled", msg.Payload["n"] * 2))

; Not every line a script prints is for the broker: the bridge reports this one.
FileAppend("a line that is not JSON`n", "*")
ExitApp(0)
