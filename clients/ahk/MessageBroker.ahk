#Requires AutoHotkey v2.0
; MessageBroker.ahk: a client for the message broker, for AutoHotkey v2 scripts.
; No third-party code: Winsock through DllCall, a JSON encoder/decoder of its own.
;
;     #Include MessageBroker.ahk
;     broker := MessageBroker("my_script")
;     broker.Connect()
;     broker.Subscribe("jobs.*", OnJob)
;     broker.Publish("jobs.created", Map("job_id", 42, "name", "Größe ""A"""))
;     OnJob(msg) {
;         ToolTip(msg.Topic ": " JSON.Dump(msg.Payload))
;     }
;
; Messages arrive asynchronously (WSAAsyncSelect posts a window message when data is
; ready), so hotkeys keep working. Each callback runs in its own thread, in the order
; the messages arrived. Calls (Connect, Publish, Subscribe, Request...) wait for the
; broker's answer and throw a BrokerError with the broker's message when it refuses.
;
; A broker started with require_token (and every broker open beyond this machine)
; wants its token in Connect(). Without a token given, the library sends the
; MESSAGE_BROKER_TOKEN environment variable, else, for a broker on this machine, the
; token in its runtime file broker-<port>.json (in MESSAGE_BROKER_RUNTIME_DIR, else
; %APPDATA%\message-broker\runtime), read at every Connect().

class MessageBroker {
    static WM_SOCKET := 0x5B42          ; a private window message (WM_USER range)
    static FD_READ := 0x01, FD_CLOSE := 0x20
    static WSAEWOULDBLOCK := 10035
    static UNAUTHORIZED := -32013        ; the broker's answer to a missing or wrong token
    static MaxFrame := 64 * 1024 * 1024  ; the broker's own limit is far lower
    static Clients := Map()              ; socket -> client, for the message handler
    static Started := false

    ; clientId: how other clients see this script (the "sender" of its messages).
    ; token: the broker's token; "" finds it (MESSAGE_BROKER_TOKEN, else the runtime
    ; file of a broker on this machine).
    __New(clientId, host := "127.0.0.1", port := 15234, token := "") {
        this.ClientId := clientId
        this.Host := host
        this.Port := port
        this.Token := token
        this.Socket := -1
        this.Connected := false
        this.Accepted := false           ; the broker took the connect: OnDisconnect is due
        this.NextId := 0
        this.Waiting := Map()            ; call id -> response, once it has arrived
        this.Subscriptions := Map()      ; pattern -> callback
        this.Inbox := []                 ; messages waiting for their callbacks
        this.Received := Buffer(65536)
        this.ReceivedLength := 0
        this.HeartbeatInterval := 5
        this.OnDisconnect := ""          ; optional: called with the reason
        this.OnError := ""               ; optional: called with errors from callbacks
        this.DispatchTimer := ObjBindMethod(this, "_Dispatch")
        this.HeartbeatTimer := ObjBindMethod(this, "_Heartbeat")
    }

    ; Connects and identifies; on a reconnection, restores the subscriptions.
    ; Returns the broker's answer (client_id, broker_version, limits...).
    Connect(timeout := 5) {
        if this.Connected
            return
        MessageBroker._Startup()
        ; Looked up first: a token from the runtime file goes only to the address the
        ; broker wrote there.
        token := this._FindToken(&source, &address)
        this.Socket := MessageBroker._OpenSocket(address, this.Port)
        this.Connected := true
        this.ReceivedLength := 0
        MessageBroker.Clients[this.Socket] := this
        ; From here on the socket is non-blocking and the window message tells when
        ; data is ready.
        events := MessageBroker.FD_READ | MessageBroker.FD_CLOSE
        if DllCall("ws2_32\WSAAsyncSelect", "Ptr", this.Socket, "Ptr", A_ScriptHwnd
                , "UInt", MessageBroker.WM_SOCKET, "Int", events) != 0
            this._Fail("WSAAsyncSelect")
        params := Map("client_id", this.ClientId, "client_type", "autohotkey", "version", A_AhkVersion)
        if token != ""
            params["token"] := token
        try {
            result := this._Call("connect", params, timeout)
        } catch BrokerError as refusal {
            ; The broker closes a connection it refused; one that did not answer is
            ; of no use either. Connect() starts afresh.
            this._Drop("connect failed", false)
            if refusal.Code = MessageBroker.UNAUTHORIZED
                throw BrokerError(this._TokenRefused(source, refusal.Message), refusal.Code)
            throw refusal
        }
        this.Accepted := true
        this.HeartbeatInterval := result.Get("heartbeat_interval", 5)
        if this.Subscriptions.Count {
            patterns := []
            for pattern in this.Subscriptions
                patterns.Push(pattern)
            this._Call("subscribe", Map("patterns", patterns), timeout)
        }
        SetTimer(this.HeartbeatTimer, Round(this.HeartbeatInterval * 1000))
        return result
    }

    ; Publishes payload (a Map, Array, object literal, string or number) on topic.
    ; Returns the message id.
    Publish(topic, payload := "", timeout := 5) {
        params := Map("topic", topic, "payload", payload)
        return this._Call("publish", params, timeout)["message_id"]
    }

    ; Calls callback(msg) for each message whose topic matches one of patterns (a
    ; string or an Array). msg has Topic, Payload, Sender, Id, Timestamp and ReplyTo.
    ; A value the callback returns answers a request.
    Subscribe(patterns, callback, timeout := 5) {
        if !HasMethod(callback)
            throw TypeError("Subscribe needs a function to call", -1)
        patterns := MessageBroker._PatternList(patterns)
        ; In place before the call: messages may arrive with its answer.
        previous := this.Subscriptions.Clone()
        for pattern in patterns
            this.Subscriptions[pattern] := callback
        try {
            return this._Call("subscribe", Map("patterns", patterns), timeout)["subscribed"]
        } catch as error {
            this.Subscriptions := previous
            throw error
        }
    }

    ; Stops patterns; returns those that were subscribed.
    Unsubscribe(patterns, timeout := 5) {
        patterns := MessageBroker._PatternList(patterns)
        result := this._Call("unsubscribe", Map("patterns", patterns), timeout)
        for pattern in patterns
            if this.Subscriptions.Has(pattern)
                this.Subscriptions.Delete(pattern)
        return result["unsubscribed"]
    }

    ; Sends a request and returns the first reply's payload. Throws a BrokerError
    ; with Code -32003 at once when nobody listens, -32002 after timeout seconds.
    Request(topic, payload := "", timeout := 5) {
        params := Map("topic", topic, "payload", payload, "timeout", timeout)
        return this._Call("request", params, timeout + 5)
    }

    ; Answers the request msg (what returning a value from the callback does).
    Reply(msg, payload) {
        if msg.ReplyTo = ""
            throw ValueError("the message on " msg.Topic " is not a request", -1)
        return this.Publish(msg.ReplyTo, payload)
    }

    ; Round trip to the broker, in milliseconds.
    Ping(timeout := 5) {
        start := A_TickCount
        this._Call("ping", "", timeout)
        return A_TickCount - start
    }

    ; Says goodbye and closes the connection. Subscriptions are kept for Connect().
    Close() {
        if !this.Connected
            return
        ; Leaving on purpose: no OnDisconnect, even when the broker closes first.
        this.Accepted := false
        try this._Call("disconnect", "", 2)
        this._Drop("closed by the script", false)
    }

    static Matches(pattern, topic) {
        wanted := StrSplit(pattern, ".")
        actual := StrSplit(topic, ".")
        for index, segment in wanted {
            if segment == "#" && index = wanted.Length
                return true
            if index > actual.Length
                return false
            if segment != "*" && segment != "+" && !(segment == actual[index])
                return false
        }
        return wanted.Length = actual.Length
    }

    ; -- the token ----------------------------------------------------------------------
    ; The token to send and, in source, where it came from ("" when there is none);
    ; in address, where to connect.
    _FindToken(&source, &address := "") {
        source := ""
        address := this.Host
        if this.Token != "" {
            source := "the Token option"
            return this.Token
        }
        token := EnvGet("MESSAGE_BROKER_TOKEN")
        if token != "" {
            source := "MESSAGE_BROKER_TOKEN"
            return token
        }
        ; The runtime file tells the token of a broker on this machine only: a remote
        ; broker on the same port is another broker, and must not learn it.
        if !MessageBroker.IsLoopback(this.Host)
            return ""
        path := this.RuntimeFile
        try {
            runtime := JSON.Load(FileRead(path, "UTF-8"))
            token := runtime is Map ? runtime.Get("token", "") : ""
            bound := runtime is Map ? runtime.Get("host", "") : ""
        } catch {
            return ""  ; no broker on this port, or not this user's: connect without one
        }
        if !(token is String) || token = "" || !(bound is String)
            return ""
        ; Another user may listen on the same port at the other loopback address (::1
        ; beside 127.0.0.1): the token goes to the broker's own address alone.
        host := Trim(this.Host, "[]")
        if host = "localhost" {
            if bound = "0.0.0.0"
                bound := "127.0.0.1"
            else if bound = "::"
                bound := "::1"
            if !MessageBroker.IsLoopback(bound)
                return ""
            address := bound
        } else if host != bound && !(bound = "0.0.0.0" && InStr(host, ".")) && !(bound = "::" && InStr(host, ":")) {
            return ""  ; a broker on another address of this machine: not the file's
        }
        source := path
        return token
    }

    ; Where the broker on this machine and Port writes its token.
    RuntimeFile {
        get {
            folder := EnvGet("MESSAGE_BROKER_RUNTIME_DIR")
            if folder = ""
                folder := A_AppData "\message-broker\runtime"
            return RTrim(folder, "\/") "\broker-" this.Port ".json"
        }
    }

    _TokenRefused(source, brokerMessage) {
        sent := source = "" ? "no token was found" : "the token from " source " was refused"
        places := "the Token option, then MESSAGE_BROKER_TOKEN"
        if MessageBroker.IsLoopback(this.Host)
            places .= ", then " this.RuntimeFile
        else
            places .= " (the runtime file only serves a broker on this machine)"
        return "the broker at " this.Host ":" this.Port " wants its token, and it is missing or wrong: "
            . sent ". The token is looked for in " places ". The broker said: " brokerMessage
    }

    ; localhost, 127.x.x.x or ::1: the host is this machine.
    static IsLoopback(host) {
        return host = "localhost" || host == "::1" || host == "[::1]"
            || RegExMatch(host, "^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$")
    }

    ; -- the call/response machinery --------------------------------------------------
    _Call(method, params, timeout) {
        id := ++this.NextId
        request := '{"jsonrpc":"2.0","method":"' method '"'
        if IsObject(params)
            request .= ',"params":' JSON.Dump(params)
        this.Waiting[id] := ""
        try {
            this._Send(request ',"id":' id '}')
            deadline := A_TickCount + timeout * 1000
            loop {
                this._Pump()
                response := this.Waiting[id]
                if IsObject(response)
                    break
                if !this.Connected
                    throw BrokerError("the connection to the broker was lost (" method ")", -32001)
                if A_TickCount > deadline
                    throw BrokerError("no answer from the broker to " method " within " timeout " s", -32002)
                Sleep(5)
            }
        } finally this.Waiting.Delete(id)
        if response.Has("error") {
            error := response["error"]
            throw BrokerError(error.Get("message", "error"), error.Get("code", 0))
        }
        return response.Get("result", "")
    }

    _Send(text) {
        if !this.Connected
            throw BrokerError("not connected: call Connect() first", -32001)
        ; The header counts UTF-8 bytes, not characters.
        size := StrPut(text, "UTF-8") - 1
        frame := Buffer(4 + size + 1)
        NumPut("UChar", size >> 24 & 0xFF, "UChar", size >> 16 & 0xFF
            , "UChar", size >> 8 & 0xFF, "UChar", size & 0xFF, frame)
        StrPut(text, frame.Ptr + 4, size + 1, "UTF-8")
        ; A frame is written whole before any other thread may write.
        wasCritical := A_IsCritical
        Critical
        try {
            sent := 0, total := 4 + size, deadline := A_TickCount + 30000
            while sent < total {
                n := DllCall("ws2_32\send", "Ptr", this.Socket, "Ptr", frame.Ptr + sent
                    , "Int", total - sent, "Int", 0, "Int")
                if n > 0 {
                    sent += n
                    continue
                }
                error := DllCall("ws2_32\WSAGetLastError")
                if error != MessageBroker.WSAEWOULDBLOCK {
                    this._Drop("send failed (Winsock error " error ")")
                    throw BrokerError("the connection to the broker was lost", -32001)
                }
                if A_TickCount > deadline {
                    this._Drop("the broker stopped reading")
                    throw BrokerError("the broker stopped reading", -32001)
                }
                DllCall("Sleep", "UInt", 1)
            }
        } finally Critical(wasCritical)
    }

    ; Reads what the socket holds and handles every whole frame. Runs with interruptions
    ; off: the window message and a waiting call may both get here.
    _Pump() {
        if !this.Connected
            return
        wasCritical := A_IsCritical
        Critical
        try {
            loop 64 {
                room := this.Received.Size - this.ReceivedLength
                if room < 16384 {
                    this.Received.Size := this.Received.Size * 2
                    room := this.Received.Size - this.ReceivedLength
                }
                n := DllCall("ws2_32\recv", "Ptr", this.Socket, "Ptr", this.Received.Ptr + this.ReceivedLength
                    , "Int", room, "Int", 0, "Int")
                if n > 0 {
                    this.ReceivedLength += n
                    this._Frames()
                    continue
                }
                if n = 0 {
                    this._Drop("the broker closed the connection")
                    break
                }
                error := DllCall("ws2_32\WSAGetLastError")
                if error != MessageBroker.WSAEWOULDBLOCK
                    this._Drop("receive failed (Winsock error " error ")")
                break
            }
        } finally Critical(wasCritical)
    }

    ; Splits the received bytes into frames; keeps a partial frame for the next read.
    _Frames() {
        offset := 0
        while this.ReceivedLength - offset >= 4 {
            at := this.Received.Ptr + offset
            size := NumGet(at, 0, "UChar") << 24 | NumGet(at, 1, "UChar") << 16
                | NumGet(at, 2, "UChar") << 8 | NumGet(at, 3, "UChar")
            if size > MessageBroker.MaxFrame {
                this._Drop("the broker sent a frame of " size " bytes")
                return
            }
            if this.ReceivedLength - offset - 4 < size
                break
            text := StrGet(at + 4, size, "UTF-8")
            offset += 4 + size
            this._Handle(text)
        }
        if offset {
            this.ReceivedLength -= offset
            if this.ReceivedLength
                DllCall("RtlMoveMemory", "Ptr", this.Received.Ptr, "Ptr", this.Received.Ptr + offset
                    , "UPtr", this.ReceivedLength)
        }
    }

    _Handle(text) {
        try incoming := JSON.Load(text)
        catch as e {
            this._Report(e)
            return
        }
        if !(incoming is Map)
            return
        method := incoming.Get("method", "")
        if method == "message" {
            this.Inbox.Push(BrokerMessage(incoming["params"]))
            SetTimer(this.DispatchTimer, -1)
        } else if method == "publish_failed" {
            params := incoming["params"]
            this._Report(BrokerError("the broker refused message " params["message_id"] ": "
                . params["message"], params["code"]))
        } else if incoming.Has("id") && this.Waiting.Has(incoming["id"]) {
            this.Waiting[incoming["id"]] := incoming
        } else if incoming.Has("error") {
            error := incoming["error"]
            this._Report(BrokerError(error.Get("message", "error"), error.Get("code", 0)))
        }
    }

    ; Runs callbacks, in arrival order, each message once per distinct callback.
    _Dispatch() {
        while this.Inbox.Length {
            msg := this.Inbox.RemoveAt(1)
            called := Map()
            answered := false
            for pattern, callback in this.Subscriptions.Clone() {
                if called.Has(callback) || !MessageBroker.Matches(pattern, msg.Topic)
                    continue
                called[callback] := true
                try {
                    result := callback(msg)
                    if !answered && msg.ReplyTo != "" && (IsObject(result) || result != "") {
                        answered := true
                        this.Publish(msg.ReplyTo, result)
                    }
                } catch as e {
                    this._Report(e)
                }
            }
        }
    }

    _Heartbeat() {
        if !this.Connected {
            SetTimer(this.HeartbeatTimer, 0)
            return
        }
        try this._Send('{"jsonrpc":"2.0","method":"ping"}')
    }

    _Report(error) {
        if HasMethod(this.OnError) {
            try this.OnError.Call(error)
        } else {
            OutputDebug("MessageBroker " this.ClientId ": " error.Message)
        }
    }

    _Fail(what) {
        error := DllCall("ws2_32\WSAGetLastError")
        this._Drop(what " failed")
        throw BrokerError(what " failed (Winsock error " error ")", -32001)
    }

    _Drop(reason, tell := true) {
        if this.Socket != -1 {
            MessageBroker.Clients.Delete(this.Socket)
            DllCall("ws2_32\closesocket", "Ptr", this.Socket)
            this.Socket := -1
        }
        wasAccepted := this.Accepted
        this.Connected := false
        this.Accepted := false
        SetTimer(this.HeartbeatTimer, 0)
        ; A refused connect is no lost connection (a script reconnecting from
        ; OnDisconnect would try again and again).
        if tell && wasAccepted && HasMethod(this.OnDisconnect)
            SetTimer(this.OnDisconnect.Bind(reason), -1)
    }

    ; -- Winsock -------------------------------------------------------------------------
    static _Startup() {
        if MessageBroker.Started
            return
        data := Buffer(408, 0)
        if error := DllCall("ws2_32\WSAStartup", "UShort", 0x0202, "Ptr", data)
            throw BrokerError("WSAStartup failed (Winsock error " error ")", -32001)
        OnMessage(MessageBroker.WM_SOCKET, (wParam, lParam, *) => MessageBroker._OnSocket(wParam))
        MessageBroker.Started := true
    }

    static _OnSocket(socket) {
        ; Critical first: a window message that comes while this one is handled is
        ; then held until it ends. Otherwise AutoHotkey treats it as unmonitored, and
        ; Winsock, which posts no other until the next recv, would leave the data unread.
        Critical
        if MessageBroker.Clients.Has(socket)
            MessageBroker.Clients[socket]._Pump()
        return 0
    }

    ; A connected, blocking TCP socket to host:port (IPv4).
    static _OpenSocket(host, port) {
        hints := Buffer(16 + 4 * A_PtrSize, 0)
        NumPut("Int", 2, "Int", 1, "Int", 6, hints, 4)  ; AF_INET, SOCK_STREAM, IPPROTO_TCP
        if error := DllCall("ws2_32\getaddrinfo", "AStr", host, "AStr", String(port), "Ptr", hints
                , "Ptr*", &info := 0)
            throw BrokerError("cannot resolve " host " (Winsock error " error ")", -32001)
        try {
            socket := DllCall("ws2_32\socket", "Int", 2, "Int", 1, "Int", 6, "Ptr")
            if socket = -1
                throw BrokerError("socket() failed (Winsock error "
                    . DllCall("ws2_32\WSAGetLastError") ")", -32001)
            address := NumGet(info, 16 + 2 * A_PtrSize, "Ptr")
            addressLength := NumGet(info, 16, "UPtr")
            if DllCall("ws2_32\connect", "Ptr", socket, "Ptr", address, "Int", addressLength) != 0 {
                error := DllCall("ws2_32\WSAGetLastError")
                DllCall("ws2_32\closesocket", "Ptr", socket)
                throw BrokerError("cannot connect to " host ":" port " (Winsock error " error ")", -32001)
            }
        } finally DllCall("ws2_32\freeaddrinfo", "Ptr", info)
        ; Small frames go out at once rather than waiting for more (Nagle).
        DllCall("ws2_32\setsockopt", "Ptr", socket, "Int", 6, "Int", 1, "Int*", 1, "Int", 4)
        return socket
    }

    static _PatternList(patterns) {
        if patterns is Array
            return patterns
        return [patterns]
    }
}

; For scripts that message_broker.ahk_bridge.AHKBridge runs: the broker's calls over
; the script's standard output (calls, one per line) and standard input (answers and
; messages). The bridge connects the script as "<bridge client id>/<script id>" and
; passes everything else through, so a script can publish with qos 1, consume queues
; and settle what they deliver. Messages are read when the script asks for them:
;
;     broker := BridgedBroker()
;     broker.Subscribe("jobs.*")
;     while msg := broker.Receive()     ; "" once the bridge closes the input
;         broker.Publish("jobs.seen", Map("id", msg.Id))
;
; Each call waits for its answer and throws a BrokerError with the broker's message
; and Code when it refuses.
class BridgedBroker {
    __New() {
        this.Input := FileOpen("*", "r", "UTF-8")
        this.NextId := 0
        this.Inbox := []
    }

    ; Publishes payload on topic; returns the message id. With qos 1 it returns once
    ; the broker has stored the message in every durable queue it matches, and throws
    ; a BrokerError when it could not (Code -32011: a queue was full; -32012: the
    ; store failed).
    Publish(topic, payload := "", qos := 0) {
        params := Map("topic", topic, "payload", payload)
        if qos
            params["qos"] := qos
        return this._Call("publish", params)["message_id"]
    }

    ; Receives the messages whose topic matches one of patterns (a string or an
    ; Array); returns the patterns. With queue, the patterns bind that queue and the
    ; script becomes one of its consumers: each message goes to one consumer, and
    ; stays the script's until it calls Ack or Nack (or ends, when it goes back to the
    ; queue). durable keeps the queue and its messages while nobody consumes; without
    ; queue it names the queue after the script's client id.
    Subscribe(patterns, queue := "", durable := false) {
        params := Map("patterns", MessageBroker._PatternList(patterns))
        if queue != ""
            params["queue"] := queue
        if durable
            params["durable"] := JSON.True
        return this._Call("subscribe", params)["subscribed"]
    }

    Unsubscribe(patterns) {
        patterns := MessageBroker._PatternList(patterns)
        return this._Call("unsubscribe", Map("patterns", patterns))["unsubscribed"]
    }

    ; Acknowledges messages from a queue (one or an Array): the queue forgets them.
    ; Returns how many were settled (0 for one already settled or given back).
    Ack(messages) {
        return this._Call("ack", Map("deliveries", BridgedBroker._Deliveries(messages)))["acked"]
    }

    ; Gives messages from a queue back (requeue, the default: delivered again, with
    ; DeliveryCount one higher) or sends them to the queue's dead-letter topic.
    ; Returns how many were settled.
    Nack(messages, requeue := true) {
        params := Map("deliveries", BridgedBroker._Deliveries(messages)
            , "requeue", requeue ? JSON.True : JSON.False)
        return this._Call("nack", params)["nacked"]
    }

    Request(topic, payload := "", timeout := 5) {
        return this._Call("request", Map("topic", topic, "payload", payload, "timeout", timeout))
    }

    Reply(msg, payload) {
        if msg.ReplyTo = ""
            throw ValueError("the message on " msg.Topic " is not a request", -1)
        return this.Publish(msg.ReplyTo, payload)
    }

    ; A round trip to the broker. Once a connection has pinged, the broker expects a
    ; ping every heartbeat_interval and drops it after heartbeat_timeout (30 s)
    ; without a line: a script that waits in Receive() longer should not ping.
    Ping() {
        return this._Call("ping", Map())
    }

    ; The next message (a BrokerMessage), waiting for it; "" when the input has ended.
    Receive() {
        if this.Inbox.Length
            return this.Inbox.RemoveAt(1)
        loop {
            incoming := this._ReadLine()
            if !IsObject(incoming)
                return ""
            if incoming.Get("method", "") == "message"
                return BrokerMessage(incoming["params"])
        }
    }

    _Call(method, params) {
        id := ++this.NextId
        line := '{"jsonrpc":"2.0","method":"' method '","params":' JSON.Dump(params) ',"id":' id '}'
        FileAppend(line "`n", "*", "UTF-8")
        loop {
            incoming := this._ReadLine()
            if !IsObject(incoming)
                throw BrokerError("the bridge closed the input (" method ")", -32001)
            if incoming.Get("method", "") == "message" {
                this.Inbox.Push(BrokerMessage(incoming["params"]))
                continue
            }
            ; An error with a null id is about a line the broker could not take (one
            ; too large, say) or the end of the connection: no other answer will come.
            if incoming.Get("id", "") != id && !(incoming.Has("error") && incoming.Get("id", "") == "")
                continue
            if incoming.Has("error") {
                error := incoming["error"]
                throw BrokerError(error.Get("message", "error"), error.Get("code", 0))
            }
            return incoming.Get("result", "")
        }
    }

    ; The next line as a Map; "" at the end of the input.
    _ReadLine() {
        loop {
            line := this.Input.ReadLine()
            if line = "" && this.Input.AtEOF
                return ""
            if line != ""
                return JSON.Load(line)
        }
    }

    static _Deliveries(messages) {
        tags := []
        for msg in (messages is Array ? messages : [messages]) {
            if msg.Delivery = ""
                throw ValueError("the message on " msg.Topic " is not from a queue", -2)
            tags.Push(msg.Delivery)
        }
        return tags
    }
}

; A delivered message.
class BrokerMessage {
    __New(params) {
        this.Topic := params["topic"]
        this.Payload := params.Get("payload", "")
        this.Sender := params.Get("sender", "")
        this.Id := params.Get("id", "")
        this.Timestamp := params.Get("timestamp", 0)
        this.ReplyTo := params.Get("reply_to", "")
        ; From a queue: its name, the tag that settles the delivery, and how many
        ; times the queue has delivered the message, this time included.
        this.Queue := params.Get("queue", "")
        this.Delivery := params.Get("delivery", "")
        this.DeliveryCount := params.Get("delivery_count", 0)
    }

    IsRequest => this.ReplyTo != ""
    Redelivered => this.DeliveryCount > 1
}

; An error the broker answered with (Code is its error code), or a lost connection.
class BrokerError extends Error {
    __New(message, code := 0) {
        super.__New(message, -1)
        this.Code := code
    }
}

; JSON for AutoHotkey values. Dump: Map and object literals become objects, Array
; becomes an array, Integer and Float numbers, everything else a string; JSON.True,
; JSON.False and JSON.Null write those literals. Load: objects become Maps, arrays
; Arrays, true/false 1/0 and null "" (AutoHotkey has no booleans or null).
class JSON {
    static True := JsonLiteral("true")
    static False := JsonLiteral("false")
    static Null := JsonLiteral("null")

    static Dump(value) {
        if value is JsonLiteral
            return value.Text
        if value is Integer
            return String(value)
        if value is Float {
            if value != value || value = value * 2 && value != 0
                throw ValueError("JSON cannot carry " value, -1)
            return String(value)
        }
        if value is Array {
            out := ""
            for item in value
                out .= (A_Index = 1 ? "" : ",") JSON.Dump(item ?? JSON.Null)
            return "[" out "]"
        }
        if value is Map {
            out := ""
            for key, item in value
                out .= (A_Index = 1 ? "" : ",") JSON._Quote(String(key)) ":" JSON.Dump(item)
            return "{" out "}"
        }
        if IsObject(value) {
            if value is Func || value is ComObject
                throw TypeError("JSON cannot carry a " Type(value), -1)
            out := ""
            for key, item in value.OwnProps()
                out .= (A_Index = 1 ? "" : ",") JSON._Quote(key) ":" JSON.Dump(item)
            return "{" out "}"
        }
        return JSON._Quote(value)
    }

    static Load(text) {
        at := 1
        value := JSON._Value(text, &at)
        JSON._Space(text, &at)
        if at <= StrLen(text)
            throw ValueError("JSON: unexpected text at character " at, -1)
        return value
    }

    static _Quote(text) {
        text := StrReplace(text, "\", "\\")
        text := StrReplace(text, '"', '\"')
        text := StrReplace(text, "`n", "\n")
        text := StrReplace(text, "`r", "\r")
        text := StrReplace(text, "`t", "\t")
        text := StrReplace(text, "`b", "\b")
        text := StrReplace(text, "`f", "\f")
        while RegExMatch(text, "[\x01-\x1F\x7F]", &found)
            text := StrReplace(text, found[0], Format("\u{:04x}", Ord(found[0])))
        return '"' text '"'
    }

    static _Space(text, &at) {
        length := StrLen(text)
        while at <= length && InStr(" `t`n`r", SubStr(text, at, 1))
            at++
    }

    static _Value(text, &at) {
        JSON._Space(text, &at)
        ch := SubStr(text, at, 1)
        if ch == "{" {
            object := Map()
            at++
            JSON._Space(text, &at)
            if SubStr(text, at, 1) == "}" {
                at++
                return object
            }
            loop {
                JSON._Space(text, &at)
                if SubStr(text, at, 1) != '"'
                    throw ValueError("JSON: expected a key at character " at, -1)
                key := JSON._String(text, &at)
                JSON._Space(text, &at)
                if SubStr(text, at++, 1) != ":"
                    throw ValueError("JSON: expected ':' at character " at - 1, -1)
                object[key] := JSON._Value(text, &at)
                JSON._Space(text, &at)
                ch := SubStr(text, at++, 1)
                if ch == "}"
                    return object
                if ch != ","
                    throw ValueError("JSON: expected ',' or '}' at character " at - 1, -1)
            }
        }
        if ch == "[" {
            array := []
            at++
            JSON._Space(text, &at)
            if SubStr(text, at, 1) == "]" {
                at++
                return array
            }
            loop {
                array.Push(JSON._Value(text, &at))
                JSON._Space(text, &at)
                ch := SubStr(text, at++, 1)
                if ch == "]"
                    return array
                if ch != ","
                    throw ValueError("JSON: expected ',' or ']' at character " at - 1, -1)
            }
        }
        if ch == '"'
            return JSON._String(text, &at)
        for literal, value in Map("true", 1, "false", 0, "null", "") {
            if SubStr(text, at, StrLen(literal)) == literal {
                at += StrLen(literal)
                return value
            }
        }
        if !RegExMatch(text, "\G-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?", &number, at)
            throw ValueError("JSON: unexpected character at " at, -1)
        at += number.Len
        ; Numbers beyond the range of a Float become inf or -inf, as in Python.
        if number[1] != "" || number[2] != ""
            return JSON._Float(number[0])
        ; Integers beyond 64 bits keep their value approximately, as a Float.
        return StrLen(number[0]) > 18 ? JSON._Float(number[0]) : Integer(number[0])
    }

    static _Float(text) {
        value := DllCall("msvcrt\strtod", "AStr", text, "Ptr", 0, "Double")
        return value
    }

    static _String(text, &at) {
        at++  ; the opening quote
        out := ""
        loop {
            if !RegExMatch(text, '["\\]', &found, at)
                throw ValueError("JSON: unterminated string", -1)
            out .= SubStr(text, at, found.Pos - at)
            at := found.Pos + 1
            if found[0] == '"'
                return out
            escape := SubStr(text, at++, 1)
            switch escape, true {
                case '"', "\", "/": out .= escape
                case "b": out .= "`b"
                case "f": out .= "`f"
                case "n": out .= "`n"
                case "r": out .= "`r"
                case "t": out .= "`t"
                case "u":
                    code := JSON._Hex(text, &at)
                    ; A surrogate pair written as two escapes is one character; a lone
                    ; surrogate stays one UTF-16 code unit, as it was sent.
                    if code >= 0xD800 && code <= 0xDBFF && SubStr(text, at, 2) == "\u" {
                        next := at + 2
                        low := JSON._Hex(text, &next)
                        if low >= 0xDC00 && low <= 0xDFFF {
                            at := next
                            code := 0x10000 + (code - 0xD800 << 10) + (low - 0xDC00)
                        }
                    }
                    out .= JSON._Char(code)
                default:
                    throw ValueError("JSON: bad escape \" escape " at character " at - 1, -1)
            }
        }
    }

    ; Chr() refuses a lone surrogate; a buffer holds any UTF-16 code unit.
    static _Char(code) {
        if code < 0xD800 || code > 0xDFFF
            return Chr(code)
        unit := Buffer(4, 0)
        NumPut("UShort", code, unit)
        return StrGet(unit, 1, "UTF-16")
    }

    static _Hex(text, &at) {
        hex := SubStr(text, at, 4)
        if !RegExMatch(hex, "^[0-9a-fA-F]{4}$")
            throw ValueError("JSON: bad \u escape at character " at, -1)
        at += 4
        return Integer("0x" hex)
    }
}

class JsonLiteral {
    __New(text) {
        this.Text := text
    }
}
