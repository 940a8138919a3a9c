"""Tests of the bot's end_call goodbye, with Pipecat's own test pipeline.

Run with the bench venv (bench/compare.sh creates it):
    bench/pipecat/.venv/bin/python -m unittest discover -s bench/pipecat -p 'test_*.py'
"""

import sys
import unittest
from unittest import mock

from loguru import logger

from pipecat.frames.frames import (
    EndFrame,
    EndWorkerFrame,
    FunctionCallResultFrame,
    FunctionCallResultProperties,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TextFrame,
    TTSSpeakFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

import bot

# Pipecat logs every frame link at DEBUG.
logger.remove()
logger.add(sys.stderr, level="WARNING")


def result(name: str, run_llm: bool) -> FunctionCallResultFrame:
    return FunctionCallResultFrame(
        function_name=name,
        tool_call_id="call-1",
        arguments={},
        result=bot.GOODBYE_INSTRUCTION,
        properties=FunctionCallResultProperties(run_llm=run_llm),
    )


def ended_by_end_call(frame) -> bool:
    """The processor's EndWorkerFrame, or the EndFrame the worker turns it into."""
    return isinstance(frame, (EndWorkerFrame, EndFrame)) and frame.reason == "end_call"


def end_index(down) -> int:
    kinds = [type(f) for f in down]
    assert kinds.count(EndWorkerFrame) == 1, kinds
    return kinds.index(EndWorkerFrame)


def reply(text: str) -> list:
    return [LLMFullResponseStartFrame(), TextFrame(text), LLMFullResponseEndFrame()]


class HangUpAfterGoodbyeTest(unittest.IsolatedAsyncioTestCase):
    async def test_ends_behind_the_reply_that_follows_end_call(self):
        down, _ = await run_test(
            bot.HangUpAfterGoodbye("fallback"),
            frames_to_send=[*reply("Anything else?"), result("end_call", True), *reply("Goodbye!")],
            send_end_frame=False,
        )
        # The reply before end_call passes untouched; the end comes right after the goodbye's end.
        end = end_index(down)
        self.assertIsInstance(down[end - 1], LLMFullResponseEndFrame)
        self.assertEqual([f.text for f in down[:end] if isinstance(f, TextFrame)], ["Anything else?", "Goodbye!"])

    async def test_other_results_and_a_final_message_do_not_arm_it(self):
        down, _ = await run_test(
            bot.HangUpAfterGoodbye("fallback"),
            frames_to_send=[result("lookup", True), result("end_call", False), *reply("Done.")],
        )
        self.assertFalse(any(map(ended_by_end_call, down)))

    async def test_no_reply_in_time_says_the_end_call_message(self):
        with mock.patch.object(bot, "GOODBYE_WAIT_SECS", 0.05):
            down, _ = await run_test(
                bot.HangUpAfterGoodbye("Thank you for calling. Goodbye."),
                frames_to_send=[result("end_call", True), SleepFrame(sleep=0.3)],
                send_end_frame=False,
            )
        end = end_index(down)
        self.assertIsInstance(down[end - 1], TTSSpeakFrame)
        self.assertEqual(down[end - 1].text, "Thank you for calling. Goodbye.")


if __name__ == "__main__":
    unittest.main()
