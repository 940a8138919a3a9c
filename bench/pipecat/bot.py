"""A Pipecat 1.x telephony bot configured like cxb-core's benchmark bot, for side-by-side runs.

One uvicorn process serves many calls at once, as Pipecat's telephony examples run: every
WebSocket on ``/exotel/{bot_id}`` is one call and one ``PipelineWorker`` on the shared event loop.

Per call, like cxb-core:

- the bot config is fetched from the same config endpoint cxb-core uses (``CXB_API_CONFIG_URL``,
  here the fake CXB API of ``cxb-sim serve``), so both stacks get the same system prompt, opening
  message, VAD parameters, provider endpoints, keys and models;
- Exotel's ``connected``/``start`` handshake is read by Pipecat's ``parse_telephony_websocket``
  and audio goes through Pipecat's ``ExotelFrameSerializer`` at the URL's ``sample-rate``
  (8 kHz by default);
- Deepgram STT (``DeepgramSTTService(base_url=...)``), OpenAI chat
  (``OpenAILLMService(base_url=...)``) and Cartesia TTS (``CartesiaTTSService(url=...)``) are
  pointed at the provider doubles through their constructors: no patching is needed;
- Silero VAD with the config's ``VADParams(confidence, start_secs, stop_secs, min_volume)``; the
  user's turn ends when the VAD reports the end of speech (``stop_secs``) and a transcript is in,
  as cxb-core ends it on its VAD hangover (Pipecat's default would add a Smart Turn model);
- barge-in after ``min_words_interruption`` words while the bot speaks (Pipecat's
  ``MinWordsUserTurnStartStrategy``);
- ``end_call(final_message?)`` is a function the LLM can call, and the caller always hears a
  goodbye before the hang-up, as cxb-core does (docs/conversation.md, Endings): the
  ``final_message`` if the LLM gave one, else the LLM is asked once more (the tool result says
  "Reply now with only a short spoken goodbye") and its reply is spoken; if that reply does not come within
  ``GOODBYE_WAIT_SECS``, the config's ``end_call_message``. Then the pipeline ends, which closes
  the socket (Exotel's hang-up); so does ``max_call_duration_seconds``.

Not done here, and done by cxb-core in the same runs: call recording, the results post,
post-call work. See bench/README.md.

Run: ``CXB_API_CONFIG_URL=http://127.0.0.1:19100/api/v1/config python bot.py --port 18090``.
"""

import argparse
import asyncio
import json
import os
import sys
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import uvicorn
from fastapi import FastAPI, WebSocket
from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    EndWorkerFrame,
    Frame,
    FunctionCallResultFrame,
    FunctionCallResultProperties,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TTSSpeakFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.exotel import ExotelFrameSerializer
from pipecat.services.cartesia.tts import CartesiaTTSService
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.turns.user_start import MinWordsUserTurnStartStrategy
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

# Exotel wants bot media in chunks of at least 3.2 KB (wire-protocols §1): 200 ms at 8 kHz
# PCM16. cxb-core groups its 20 ms frames the same way on this route.
EXOTEL_MIN_CHUNK_BYTES = 3200
CONFIG_TIMEOUT_SECS = 5.0
CONFIG_MAX_BYTES = 1 << 20
# Silero runs at 8 or 16 kHz, and the pipeline runs at the call's rate.
SUPPORTED_RATES = (8000, 16000)
# How long the goodbye asked of the LLM after end_call may take to start before the bot's
# end_call_message is said instead (cxb-core bounds it by the LLM first-token timeout).
GOODBYE_WAIT_SECS = 5.0
DEFAULT_END_CALL_MESSAGE = "Thank you for calling. Goodbye."
# The end_call tool result when the LLM gave no final_message: what cxb-core tells the model.
GOODBYE_INSTRUCTION = (
    "ok: the call will end right after your goodbye. Reply now with only a short spoken goodbye to the "
    "caller (one sentence) and do not call any tool."
)

END_CALL = FunctionSchema(
    name="end_call",
    # cxb-core's built-in end_call, word for word (the same request bytes for the LLM double).
    description="End the current call. Use it when the conversation is complete or the caller wants to hang up. "
    "Say goodbye in final_message.",
    properties={"final_message": {"type": "string", "description": "A short goodbye spoken before hanging up."}},
    required=[],
)


class ConfigError(Exception):
    """The bot config could not be fetched or is not usable."""


def _section(cfg: dict, name: str) -> dict:
    value = cfg.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"config has no {name} block")
    return value


def _string(block: dict, key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key} must be a non-empty string")
    return value


async def fetch_config(http: aiohttp.ClientSession, bot_id: str, call: Any) -> dict:
    """GET {CXB_API_CONFIG_URL}/{bot_id}?caller_id=&stream_id=, bounded in time and size."""
    base = os.environ.get("CXB_API_CONFIG_URL", "").rstrip("/")
    if not base:
        raise ConfigError("CXB_API_CONFIG_URL is not set")
    headers = {}
    secret = os.environ.get("CXBCORE_SECRET")
    if secret:
        headers["X-CXBCore-Secret"] = secret
    query = {"caller_id": call.get("from") or "", "stream_id": call.get("stream_id") or ""}
    try:
        async with http.get(f"{base}/{bot_id}", params=query, headers=headers) as resp:
            if resp.status != 200:
                raise ConfigError(f"config fetch for {bot_id!r} answered HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > CONFIG_MAX_BYTES:
                    raise ConfigError("config larger than 1 MiB")
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise ConfigError(f"config fetch for {bot_id!r} failed: {e!r}") from e
    try:
        cfg = json.loads(body)
    except ValueError as e:
        raise ConfigError(f"config is not JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise ConfigError("config is not a JSON object")
    return cfg


def build_services(cfg: dict, rate: int):
    """STT, LLM and TTS services pointed at the endpoints the config names."""
    stt_cfg, llm_cfg, tts_cfg = (_section(cfg, k) for k in ("stt", "llm", "tts"))
    extra = stt_cfg.get("extra") if isinstance(stt_cfg.get("extra"), dict) else {}
    stt = DeepgramSTTService(
        api_key=_string(stt_cfg, "api_key", "stt"),
        # The SDK's API root: ws(s)://host[:port]; the service derives /v1/listen from it.
        base_url=_string(stt_cfg, "base_url", "stt"),
        sample_rate=rate,
        settings=DeepgramSTTService.Settings(
            model=stt_cfg.get("model") or "nova-3",
            language=stt_cfg.get("language") or "en",
            interim_results=True,
            endpointing=extra.get("endpointing"),
            utterance_end_ms=extra.get("utterance_end_ms"),
        ),
    )
    llm_settings: dict[str, Any] = {
        "model": _string(llm_cfg, "model", "llm"),
        "system_instruction": cfg.get("system_prompt") or None,
    }
    if isinstance(llm_cfg.get("temperature"), (int, float)):
        llm_settings["temperature"] = float(llm_cfg["temperature"])
    if isinstance(llm_cfg.get("max_tokens"), int):
        llm_settings["max_tokens"] = llm_cfg["max_tokens"]
    llm = OpenAILLMService(
        api_key=_string(llm_cfg, "api_key", "llm"),
        base_url=_string(llm_cfg, "base_url", "llm"),
        settings=OpenAILLMService.Settings(**llm_settings),
    )
    if tts_cfg.get("provider", "cartesia") != "cartesia":
        raise ConfigError(f"this bot speaks Cartesia only, not {tts_cfg.get('provider')!r}")
    tts = CartesiaTTSService(
        api_key=_string(tts_cfg, "api_key", "tts"),
        # The config's base_url is the SDK's API root; the WebSocket lives at /tts/websocket.
        url=_string(tts_cfg, "base_url", "tts").rstrip("/") + "/tts/websocket",
        sample_rate=rate,
        settings=CartesiaTTSService.Settings(
            model=tts_cfg.get("model") or "sonic-3",
            voice=_string(tts_cfg, "voice_id", "tts"),
        ),
    )
    return stt, llm, tts


def end_call_message(cfg: dict) -> str:
    message = cfg.get("end_call_message")
    return message if isinstance(message, str) and message.strip() else DEFAULT_END_CALL_MESSAGE


def vad_params(cfg: dict) -> VADParams:
    vad = cfg.get("vad") if isinstance(cfg.get("vad"), dict) else {}
    known = ("confidence", "start_secs", "stop_secs", "min_volume")
    return VADParams(**{k: float(vad[k]) for k in known if isinstance(vad.get(k), (int, float))})


class HangUpAfterGoodbye(FrameProcessor):
    """Between the LLM and the TTS: ends the call once the goodbye asked after end_call is said.

    ``end_call`` without a ``final_message`` answers the tool call and runs the LLM again. The
    tool result passes here on its way to the context; the next LLM response is the goodbye, and
    the EndWorkerFrame pushed behind its end reaches the output after its audio. If no response
    starts within ``GOODBYE_WAIT_SECS``, the fallback message is said instead.
    """

    def __init__(self, fallback: str):
        super().__init__()
        self._fallback = fallback
        self._armed = False
        self._in_goodbye = False
        self._timer: asyncio.Task | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if direction != FrameDirection.DOWNSTREAM:
            return
        if isinstance(frame, FunctionCallResultFrame) and frame.function_name == "end_call":
            if frame.properties is not None and frame.properties.run_llm:
                self._armed = True
                self._timer = self.create_task(self._say_fallback_if_silent(), "goodbye_wait")
        elif self._armed and isinstance(frame, LLMFullResponseStartFrame):
            self._in_goodbye = True
            await self._stop_timer()
        elif self._in_goodbye and isinstance(frame, LLMFullResponseEndFrame):
            self._armed = self._in_goodbye = False
            await self.push_frame(EndWorkerFrame(reason="end_call"))

    async def _say_fallback_if_silent(self):
        await asyncio.sleep(GOODBYE_WAIT_SECS)
        if self._armed and not self._in_goodbye:
            self._armed = False
            await self.push_frame(TTSSpeakFrame(self._fallback))
            await self.push_frame(EndWorkerFrame(reason="end_call"))

    async def _stop_timer(self):
        if self._timer is not None:
            await self.cancel_task(self._timer)
            self._timer = None

    async def cleanup(self):
        await self._stop_timer()
        await super().cleanup()


async def end_call(params: FunctionCallParams):
    """The LLM's end_call: a goodbye, then the end of the pipeline (which closes the socket)."""
    final = params.arguments.get("final_message")
    if isinstance(final, str) and final.strip():
        await params.result_callback({"ended": True}, properties=FunctionCallResultProperties(run_llm=False))
        await params.llm.push_frame(TTSSpeakFrame(final))
        # Downstream, behind the goodbye: the worker ends once the frames ahead of it are flushed.
        await params.llm.push_frame(EndWorkerFrame(reason="end_call"))
        return
    # No goodbye given: the LLM's next reply is it (HangUpAfterGoodbye ends the call behind it).
    await params.result_callback(GOODBYE_INSTRUCTION, properties=FunctionCallResultProperties(run_llm=True))


async def run_call(websocket: WebSocket, call: Any, cfg: dict, rate: int):
    stt, llm, tts = build_services(cfg, rate)
    llm.register_function("end_call", end_call)
    min_words = cfg.get("min_words_interruption")
    min_words = min_words if isinstance(min_words, int) and min_words > 0 else 1

    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            # 10 ms units: one media message per 3.2 KB at 8 kHz (Exotel's minimum).
            audio_out_10ms_chunks=max(1, EXOTEL_MIN_CHUNK_BYTES // (rate // 50)),
            serializer=ExotelFrameSerializer(
                stream_sid=call.get("stream_id"),
                call_sid=call.get("call_id"),
                params=ExotelFrameSerializer.InputParams(exotel_sample_rate=rate),
            ),
        ),
    )
    context = LLMContext(tools=ToolsSchema(standard_tools=[END_CALL]))
    user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(sample_rate=rate, params=vad_params(cfg)),
            user_turn_strategies=UserTurnStrategies(
                start=[MinWordsUserTurnStartStrategy(min_words=min_words)],
                # The VAD's stop_secs is the whole end-of-turn wait, as in cxb-core.
                stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0)],
            ),
        ),
    )
    pipeline = Pipeline(
        [
            transport.input(),
            stt,
            user_aggregator,
            llm,
            HangUpAfterGoodbye(end_call_message(cfg)),
            tts,
            transport.output(),
            assistant_aggregator,
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=rate, audio_out_sample_rate=rate),
        # No RTVI client on a phone line.
        enable_rtvi=False,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    opening = cfg.get("opening_message")

    @transport.event_handler("on_client_connected")
    async def on_client_connected(_transport, _client):
        if isinstance(opening, str) and opening.strip():
            await worker.queue_frames([TTSSpeakFrame(opening)])

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport, _client):
        await runner.cancel()

    max_secs = cfg.get("max_call_duration_seconds")
    max_secs = float(max_secs) if isinstance(max_secs, (int, float)) and max_secs > 0 else 600.0

    async def hang_up_at_max_duration():
        await asyncio.sleep(max_secs)
        # Cancel, not end: an EndFrame would wait for the reply being spoken to finish.
        await worker.cancel(reason="max_call_duration")

    timer = asyncio.create_task(hang_up_at_max_duration())
    try:
        await runner.run()
    finally:
        timer.cancel()


def create_app() -> FastAPI:
    state: dict[str, aiohttp.ClientSession] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        timeout = aiohttp.ClientTimeout(total=CONFIG_TIMEOUT_SECS)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            state["http"] = http
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.websocket("/exotel/{bot_id}")
    async def exotel(websocket: WebSocket, bot_id: str):
        try:
            rate = int(websocket.query_params.get("sample-rate", "8000"))
        except ValueError:
            rate = 0
        if rate not in SUPPORTED_RATES:
            await websocket.close(code=1008)
            return
        await websocket.accept()
        try:
            kind, call = await asyncio.wait_for(parse_telephony_websocket(websocket), timeout=10)
            if kind != "exotel":
                raise ConfigError(f"expected Exotel's handshake, got {kind!r}")
            cfg = await fetch_config(state["http"], bot_id, call)
            await run_call(websocket, call, cfg, rate)
        except (ConfigError, ValueError, asyncio.TimeoutError) as e:
            logger.warning(f"call on bot {bot_id!r} refused: {e}")
            await websocket.close(code=1011)

    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--log-level", default=os.environ.get("PIPECAT_LOG_LEVEL", "WARNING"))
    args = parser.parse_args()
    # Pipecat logs every frame decision at DEBUG; a production deployment logs warnings.
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning", ws_max_size=1 << 20)


if __name__ == "__main__":
    main()
