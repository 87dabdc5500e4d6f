#Requires AutoHotkey v2.0
; Driven by tests/test_ahk.py: counts what arrives and calls the broker only at the end,
; so that nothing but the socket's window message tells it that data is waiting.
#Include ..\..\clients\ahk\MessageBroker.ahk
#SingleInstance Off
Persistent
OnError((error, *) => (Say("error: " error.Message " (line " error.Line ")"), ExitApp(3)))

Say(line) {
    FileAppend(line "`n", "*", "UTF-8")
}

received := 0
broker := MessageBroker("ahk_listener", "127.0.0.1", Integer(A_Args[1]))
broker.OnError := (error) => Say("error: " error.Message)
broker.Connect()
broker.Subscribe("listen.tick", OnTick)
broker.Subscribe("listen.done", OnDone)
broker.Publish("listen.ready", "")

OnTick(msg) {
    global received
    received += 1
}

OnDone(msg) {
    global broker, received
    broker.Publish("listen.total", received)
    broker.Close()
    ExitApp(0)
}
