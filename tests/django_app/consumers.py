"""A chat room: every client joins the group ``room``. A client that sends ``say TEXT``
has TEXT sent to the whole room; ``to CHANNEL TEXT`` sends TEXT to one consumer's own
channel, wherever it runs. Each client is told its channel name when it joins."""

from __future__ import annotations

import json

from channels.generic.websocket import AsyncWebsocketConsumer

ROOM = "room"


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(ROOM, self.channel_name)
        await self.accept()
        await self.send(json.dumps({"joined": self.channel_name}))

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(ROOM, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        command, _, rest = (text_data or "").partition(" ")
        if command == "say":
            await self.channel_layer.group_send(ROOM, {"type": "chat.message", "text": rest})
        elif command == "to":
            channel, _, text = rest.partition(" ")
            await self.channel_layer.send(channel, {"type": "chat.message", "text": text})

    async def chat_message(self, event: dict) -> None:
        await self.send(json.dumps({"text": event["text"]}))
