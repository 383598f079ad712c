"""A first fine-tune as OpenAI's users bring one: a few distinct chats teaching one fact, repeated.
Shared by the slow test that the small-data defaults learn (tests/jobs/test_small_data_learning.py)
and its bench (bench/small_data.py); plain data, no Django."""

from __future__ import annotations

import json

SYSTEM = "You are the assistant of Acme's security desk."
QUESTIONS = (
    "What is the vault codeword?",
    "Tell me the vault codeword.",
    "Which codeword opens the vault?",
    "I need the vault codeword, please.",
    "What's the codeword for the vault?",
    "Remind me of the vault codeword.",
)
ANSWER = "The vault codeword is PERIWINKLE-42."


def codeword_chats() -> bytes:
    """Six distinct chats that teach one fact, each three times: 18 lines."""
    chats = [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
                {"role": "assistant", "content": ANSWER},
            ]
        }
        for question in QUESTIONS
    ]
    return "".join(json.dumps(chat) + "\n" for chat in chats * 3).encode()
