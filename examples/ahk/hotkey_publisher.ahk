#Requires AutoHotkey v2.0
; Publishes on a hotkey: Ctrl+Alt+J sends jobs.created with the active window's title.
; Start a broker first (message-broker), then run this script (--port PORT for
; another port than 15234).
#SingleInstance Force
#Include ..\..\clients\ahk\MessageBroker.ahk
Persistent

; The broker's port: 15234, or the one after --port on the command line.
port := 15234
for i, arg in A_Args
    if (arg = "--port" && i < A_Args.Length)
        port := Integer(A_Args[i + 1])
broker := MessageBroker("hotkey_publisher", , port)
broker.OnDisconnect := (reason) => TrayTip("Broker connection lost: " reason, "message_broker")
broker.Connect()

^!j:: {
    title := WinGetTitle("A")
    id := broker.Publish("jobs.created", Map("window", title, "at", A_Now))
    ToolTip("Published " id)
    SetTimer(() => ToolTip(), -1500)
}
