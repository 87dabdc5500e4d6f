#Requires AutoHotkey v2.0
; Publishes on a hotkey: Ctrl+Alt+J sends jobs.created with the active window's title.
; Start a broker first (message-broker), then run this script.
#SingleInstance Force
#Include ..\..\clients\ahk\MessageBroker.ahk
Persistent

broker := MessageBroker("hotkey_publisher")
broker.OnDisconnect := (reason) => TrayTip("Broker connection lost: " reason, "message_broker")
broker.Connect()

^!j:: {
    title := WinGetTitle("A")
    id := broker.Publish("jobs.created", Map("window", title, "at", A_Now))
    ToolTip("Published " id)
    SetTimer(() => ToolTip(), -1500)
}
