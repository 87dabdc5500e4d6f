#Requires AutoHotkey v2.0
; Driven by tests/test_ahk.py against a stand-in broker that splits frames across reads
; and packs several into one.
#SingleInstance Off
#Include ..\..\clients\ahk\MessageBroker.ahk
Persistent
OnError((error, *) => (FileAppend("error: " error.Message "`n", "*", "UTF-8"), ExitApp(3)))

received := []
broker := MessageBroker("ahk_frames", "127.0.0.1", Integer(A_Args[1]))
broker.Connect()
broker.Subscribe("t.#", Collect)

Collect(msg) {
    global broker, received
    received.Push(Map("topic", msg.Topic, "text", msg.Payload["text"]))
    if received.Length < 4
        return
    broker.Publish("t.done", Map("received", received))
    broker.Close()
    ExitApp(0)
}
