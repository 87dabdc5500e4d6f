#Requires AutoHotkey v2.0
; Driven by tests/test_ahk.py against a broker that requires its token. Arguments: the
; port, then the tokens to connect with in turn until one is taken ("find": none given,
; the library looks for it). Reports each refusal, echoes what arrives on
; ahk.token.in, reconnects when the broker goes away, and leaves on ahk.token.quit.
#Include ..\..\clients\ahk\MessageBroker.ahk
#SingleInstance Off
Persistent
OnError((error, *) => (Say("error: " error.Message " (line " error.Line ")"), ExitApp(3)))

Say(line) {
    FileAppend(line "`n", "*", "UTF-8")
}

port := Integer(A_Args[1])
broker := MessageBroker("ahk_token", "127.0.0.1", port)
; Called only for a connection the broker had taken and lost: not for a refused
; connect, not for Close().
broker.OnDisconnect := Reconnect
for token in A_Args {
    if A_Index = 1
        continue
    broker.Token := token == "find" ? "" : token
    try {
        broker.Connect()
    } catch BrokerError as refusal {
        Say("refused " refusal.Code " connected=" broker.Connected ": " refusal.Message)
        continue
    }
    ; Where the token would come from for a broker elsewhere on the same port, and
    ; for a listener on another loopback address of this machine.
    MessageBroker("ahk_remote", "192.0.2.1", port)._FindToken(&remote)
    MessageBroker("ahk_other", "127.0.0.2", port)._FindToken(&other)
    Say("connected; remote token from: " (remote = "" ? "nowhere" : remote)
        . "; other loopback address: " (other = "" ? "nowhere" : other))
    broker.Subscribe("ahk.token.in", (msg) => broker.Publish("ahk.token.out", msg.Payload))
    broker.Subscribe("ahk.token.quit", (*) => (broker.Close(), ExitApp(0)))
    return
}
Say("never connected")
ExitApp(0)

; A broker started again has a new token: Connect() looks for it again.
Reconnect(reason) {
    global broker
    Say("disconnected: " reason)
    loop 200 {
        try {
            broker.Connect()
            Say("reconnected")
            return
        } catch BrokerError as error {
            last := error.Message
            Sleep(100)
        }
    }
    Say("never reconnected: " last)
    ExitApp(4)
}
