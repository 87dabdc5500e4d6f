#Requires AutoHotkey v2.0
; Reacts to jobs.*: shows each job in a tooltip, and answers "jobs.count" requests
; with how many it has seen. Hotkeys keep working while messages arrive. Takes
; --port PORT for a broker on another port than 15234.
#SingleInstance Force
#Include ..\..\clients\ahk\MessageBroker.ahk
Persistent

seen := 0
; The broker's port: 15234, or the one after --port on the command line.
port := 15234
for i, arg in A_Args
    if (arg = "--port" && i < A_Args.Length)
        port := Integer(A_Args[i + 1])
broker := MessageBroker("job_watcher", , port)
broker.Connect()
broker.Subscribe("jobs.*", OnJob)
broker.Subscribe("jobs.count", (msg) => Map("seen", seen))

OnJob(msg) {
    global seen
    if msg.IsRequest  ; jobs.count also matches jobs.*
        return
    seen += 1
    ToolTip(msg.Topic " from " msg.Sender ":`n" JSON.Dump(msg.Payload))
    SetTimer(() => ToolTip(), -3000)
}

^!q:: ExitApp()
