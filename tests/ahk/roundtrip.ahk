#Requires AutoHotkey v2.0
; Driven by tests/test_ahk.py: answers what Python sends, then leaves when told.
#Include ..\..\clients\ahk\MessageBroker.ahk
#SingleInstance Off
Persistent
; A runtime error would open a dialog and wait: print it and leave instead.
OnError((error, *) => (Say("error: " error.Message " (line " error.Line ")"), ExitApp(3)))

Say(line) {
    FileAppend(line "`n", "*", "UTF-8")
}

broker := MessageBroker("ahk_roundtrip", "127.0.0.1", Integer(A_Args[1]))
broker.OnError := (error) => Say("error: " error.Message)
broker.Connect()
broker.Subscribe(["ahk.in", "ahk.quit"], OnMessage_)
broker.Subscribe("ahk.svc.*", (msg) => Map("doubled", msg.Payload["n"] * 2, "topic", msg.Topic))
broker.Subscribe("ahk.ask", OnAsk)
Say("ping " broker.Ping())
broker.Publish("ahk.ready", Map("version", A_AhkVersion))
Say("ready")

OnMessage_(msg) {
    global broker
    if msg.Topic == "ahk.quit" {
        broker.Close()
        Say("bye")
        ExitApp(0)
    }
    text := msg.Payload["text"]
    ; Echo what arrived, as AutoHotkey understood it, for Python to compare.
    broker.Publish("ahk.out", Map("echo", msg.Payload, "text", text, "length", StrLen(text)
        , "sender", msg.Sender, "nested", msg.Payload["nested"][2]["k"]))
}

OnAsk(msg) {
    global broker
    answer := broker.Request("py.double", Map("n", 21), 5)
    try {
        broker.Request("nobody.listens", "", 5)
        missing := "answered?"
    } catch BrokerError as e {
        missing := e.Code ": " e.Message
    }
    try {
        broker.Publish("system.fake", 1)
        refused := "accepted?"
    } catch BrokerError as e {
        refused := e.Code
    }
    gone := broker.Unsubscribe(["ahk.svc.*", "never.subscribed"])
    return Map("answer", answer, "missing", missing, "refused", refused, "gone", gone)
}
