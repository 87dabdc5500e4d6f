#Requires AutoHotkey v2.0
; Driven by tests/test_ahk.py: reports how each payload on odd.* arrived.
#Include ..\..\clients\ahk\MessageBroker.ahk
#SingleInstance Off
Persistent
OnError((error, *) => (Say("error: " error.Message " (line " error.Line ")"), ExitApp(3)))

Say(line) {
    FileAppend(line "`n", "*", "UTF-8")
}

broker := MessageBroker("ahk_odd", "127.0.0.1", Integer(A_Args[1]))
broker.OnError := (error) => Say("error: " error.Message)
broker.Connect()
broker.Subscribe("odd.#", OnOdd)
broker.Subscribe("odd_quit", (*) => (broker.Close(), Say("bye"), ExitApp(0)))
broker.Publish("ahk.ready", "")

OnOdd(msg) {
    global broker
    value := msg.Payload
    ; Strings as their UTF-16 code units, so lone surrogates show.
    if value is String {
        units := []
        loop StrLen(value)
            units.Push(Ord(SubStr(value, A_Index, 1)) & 0xFFFF)
        broker.Publish("ahk.odd", Map("type", "String", "units", units))
    } else if value is Map {
        broker.Publish("ahk.odd", Map("type", "Map", "keys", value.Count))
    } else {
        broker.Publish("ahk.odd", Map("type", Type(value), "text", String(value)))
    }
}
