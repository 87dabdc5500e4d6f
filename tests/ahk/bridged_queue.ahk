#Requires AutoHotkey v2.0
; Run by AHKBridge in tests/test_ahk_bridge.py: qos 1 publishes and a queue consumed
; with manual acknowledgements, through the script's standard streams.
#SingleInstance Off
#Include ..\..\clients\ahk\MessageBroker.ahk
OnError((error, *) => (FileAppend("error: " error.Message "`n", "**", "UTF-8"), ExitApp(3)))

broker := BridgedBroker()
; qos 1: the answer comes once the message is stored, or says why it was not.
stored := broker.Publish("bridged.stored", Map("n", 1), 1)
try {
    broker.Publish("bridged.full", Map("n", 2), 1)
    refused := 0
} catch BrokerError as refusal {
    refused := refusal.Code
}
; A line longer than the broker's max_message_size (1 MiB) is refused without an id.
try {
    broker.Publish("bridged.huge", Format("{:1100000}", ""))
    huge := 0
} catch BrokerError as refusal {
    huge := refusal.Code
}
broker.Subscribe("bridged.quit")
broker.Subscribe("bridged.work", "bridged_work", true)
broker.Publish("bridged.ready", Map("stored", stored, "refused", refused, "huge", huge))

; The first delivery is given back, the second (the same message) acknowledged.
first := broker.Receive()
nacked := broker.Nack(first)
again := broker.Receive()
acked := broker.Ack(again)
broker.Publish("bridged.acked", Map("payload", again.Payload, "queue", again.Queue
    , "counts", [first.DeliveryCount, again.DeliveryCount], "redelivered", again.Redelivered
    , "settled", [nacked, acked]))

; This one is never settled: it goes back to the queue when the script ends.
held := broker.Receive()
broker.Publish("bridged.holding", Map("payload", held.Payload))
broker.Receive()  ; bridged.quit
ExitApp(0)
