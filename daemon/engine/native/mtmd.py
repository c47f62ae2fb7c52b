"""libmtmd (images and audio into a llama.cpp text model): the projector, released
deterministically (close or `with`). Its bitmaps and chunks are in native/media_chunks.py,
the decoding of embedding rows in native/embd_batch.py.

llama.cpp stays imported in one module: the bindings come from native/llama.py. A prompt is
text with a media marker per bitmap; `Projector.tokenize` splits it into chunks (text token
runs and image/audio chunks); an image chunk is encoded to (n_tokens, n_embd) embeddings that
are decoded into a sequence in place of token embeddings.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from daemon.engine.errors import GenerationFailed, InvalidInput, LoadFailed
from daemon.engine.mediainfo import sniff
from daemon.engine.native.embd_batch import decode_rows
from daemon.engine.native.llama import Context, Model, init_backend, lc, mtmd
from daemon.engine.native.logs import log_callback
from daemon.engine.native.media_chunks import Bitmap, Chunk, Chunks, ChunkType
from daemon.engine.native.structs import checked

log = logging.getLogger("edged.mtmd")

_log_lock = threading.Lock()
_log_routed = False
_log_callback = log_callback(log)


def _route_logs() -> None:
    """Send libmtmd's and its helpers' log lines to `logging` instead of stderr (once)."""
    global _log_routed
    with _log_lock:
        if not _log_routed:
            mtmd.mtmd_log_set(_log_callback, ctypes.c_void_p(0))
            mtmd.mtmd_helper_log_set(_log_callback, ctypes.c_void_p(0))
            _log_routed = True


def default_marker() -> str:
    """The text that stands for one bitmap in a prompt (`<__media__>`)."""
    return mtmd.mtmd_default_marker().decode()


@dataclass(frozen=True)
class ProjectorOptions:
    """How to run a projector: device, threads, attention kernel, warm-up."""

    use_gpu: bool = False
    n_threads: int = 4
    # None: llama.cpp decides (flash attention where the device has it). False keeps the
    # encoder's attention in F32 on CPU, which the exactness tests rely on.
    flash_attn: bool | None = None
    # One encode of a dummy image at load: sizes the compute buffers up front.
    warmup: bool = True
    # Token budget per image for dynamic-resolution projectors (None: the GGUF's default).
    image_min_tokens: int | None = None
    image_max_tokens: int | None = None
    # libmtmd's helper decodes a buffer that is neither image nor audio as video by running
    # ffprobe/ffmpeg from PATH on it: off, request bytes never reach a subprocess.
    video: bool = False


_FLOAT_P = ctypes.POINTER(ctypes.c_float)

# ffmpeg's tools are looked up in this directory when video is off: nothing can exist under
# a file, so the spawn fails without running anything.
_NO_FFMPEG_DIR = b"/dev/null"


def _check_seconds(seconds: float, before: float, max_seconds: float | None) -> None:
    """A clip of `seconds` after `before` seconds of the same prompt's audio: not empty, and
    all of it within the limit (None: no limit)."""
    if seconds <= 0:
        raise InvalidInput("the audio is empty", subject="audio")
    if max_seconds is not None and before + seconds > max_seconds:
        raise InvalidInput(
            f"{before + seconds:.1f} s of audio is over the {max_seconds:g}-second limit",
            subject="audio",
        )


class Projector:
    """An mmproj GGUF loaded against one text model (close it before the model).

    One thread at a time: libmtmd keeps a single output buffer per projector."""

    def __init__(
        self, model: Model, path: Path, options: ProjectorOptions = ProjectorOptions()
    ) -> None:
        init_backend()
        if mtmd is None:
            raise LoadFailed(
                "this llama-cpp-python build has no libmtmd (images and audio): rebuild it "
                "without -DLLAVA_BUILD=off"
            )
        _route_logs()
        if not path.is_file():
            raise LoadFailed(f"projector file not found: {path.name}")
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = options.use_gpu
        params.n_threads = options.n_threads
        params.warmup = options.warmup
        params.print_timings = False
        if options.flash_attn is not None:
            params.flash_attn_type = (
                lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if options.flash_attn
                else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        if options.image_min_tokens is not None:
            params.image_min_tokens = options.image_min_tokens
        if options.image_max_tokens is not None:
            params.image_max_tokens = options.image_max_tokens
        ptr = mtmd.mtmd_init_from_file(str(path).encode(), model.ptr, checked(params))
        if not ptr:
            # mtmd logs the reason (unknown projector type, n_embd mismatch ...) at ERROR.
            raise LoadFailed(
                f"llama.cpp could not load the projector {path.name} for {model.path.name} "
                "(not an mmproj GGUF, an unsupported projector type, or another model's width)"
            )
        self.ptr = ptr
        self.model = model
        self.path = path
        self.size_bytes: int = path.stat().st_size  # the weights it loaded
        self.n_embd: int = lc.llama_model_n_embd_inp(model.ptr)
        self.vision: bool = bool(mtmd.mtmd_support_vision(ptr))
        self.audio: bool = bool(mtmd.mtmd_support_audio(ptr))
        # -1 without audio; audio bitmaps hold mono float PCM at this rate.
        self.audio_sample_rate: int = mtmd.mtmd_get_audio_sample_rate(ptr)
        self.marker: str = (mtmd.mtmd_get_marker(ptr) or mtmd.mtmd_default_marker()).decode()
        # Qwen2-VL style models position image tokens on a 2-D grid (4 positions per token).
        self.uses_mrope: bool = bool(mtmd.mtmd_decode_use_mrope(ptr))
        self._decode_opt = mtmd.mtmd_helper_init_opt_default()
        if not options.video:
            self._decode_opt.video_params.ffmpeg_bin_dir = _NO_FFMPEG_DIR

    def _live(self) -> int:
        if not self.ptr:
            raise RuntimeError("the projector is closed")
        return self.ptr

    def bitmap_rgb(
        self, data: bytes, width: int, height: int, media_id: str | None = None
    ) -> Bitmap:
        """A bitmap of raw RGB bytes (row-major, 3 bytes per pixel)."""
        if width <= 0 or height <= 0 or len(data) != width * height * 3:
            # libmtmd asserts (aborts the process) on a size mismatch: refuse it here.
            raise InvalidInput(
                f"{len(data)} bytes are not a {width}×{height} RGB image", subject="image"
            )
        self._live()
        buf = ctypes.cast(data, ctypes.POINTER(ctypes.c_uint8))  # read only, copied by mtmd
        ptr = mtmd.mtmd_bitmap_init(width, height, buf)
        if not ptr:
            raise GenerationFailed("libmtmd could not allocate a bitmap")
        return Bitmap(ptr, media_id)

    def bitmap_audio(self, samples: np.ndarray, media_id: str | None = None) -> Bitmap:
        """A bitmap of mono float PCM samples at `audio_sample_rate`."""
        if not self.audio:
            raise InvalidInput("this model does not take audio", subject="audio")
        pcm = np.ascontiguousarray(samples, dtype=np.float32)
        if pcm.ndim != 1 or pcm.size < 2:
            raise InvalidInput("audio must be a non-empty mono sample array", subject="audio")
        ptr = mtmd.mtmd_bitmap_init_from_audio(pcm.size, pcm.ctypes.data_as(_FLOAT_P))
        if not ptr:
            raise GenerationFailed("libmtmd could not allocate an audio bitmap")
        return Bitmap(ptr, media_id)

    def bitmap_file_bytes(
        self,
        data: bytes,
        media_id: str | None = None,
        *,
        max_pixels: int | None = None,
        max_seconds: float | None = None,
        seconds_before: float = 0.0,
    ) -> Bitmap:
        """A bitmap decoded from an encoded file in memory: an image (PNG, JPEG, GIF, BMP,
        through stb_image) or audio (WAV, MP3, FLAC). The format is read from the first bytes
        and the declared size checked against max_pixels, or max_seconds for the prompt's
        audio (`seconds_before` of it in earlier clips), before anything is decoded; the
        decoded size is checked again (headers may not say, or may lie)."""
        ptr = self._live()
        header = sniff(data)
        if header is None:
            raise InvalidInput(
                "unsupported media (images: PNG, JPEG, GIF, BMP; audio: WAV, MP3, FLAC)",
                subject="media",
            )
        if header.kind == "audio" and not self.audio:
            raise InvalidInput("this model does not take audio", subject="audio")
        if header.kind == "image" and not self.vision:
            raise InvalidInput("this model does not take images", subject="image")
        if header.flaw is not None:
            raise InvalidInput(header.flaw, subject=header.kind)
        if header.seconds is not None:
            _check_seconds(header.seconds, seconds_before, max_seconds)
        declared = header.pixels
        if max_pixels is not None and declared is not None and declared > max_pixels:
            raise InvalidInput(
                f"a {header.width}×{header.height} image is over the {max_pixels}-pixel limit",
                subject="image",
            )
        buf = ctypes.cast(data, ctypes.POINTER(ctypes.c_uint8))
        ptr = mtmd.mtmd_helper_bitmap_init_from_buf(ptr, buf, len(data), False, self._decode_opt)
        if not ptr:
            raise InvalidInput(f"the {header.format} file cannot be decoded", subject=header.kind)
        bitmap = Bitmap(ptr, media_id)
        if header.kind == "image" and max_pixels and bitmap.width * bitmap.height > max_pixels:
            bitmap.close()  # a size only the decoder found (a JPEG without a readable frame)
            raise InvalidInput(f"the image is over the {max_pixels}-pixel limit", subject="image")
        if bitmap.is_audio:
            try:
                seconds = bitmap.width / self.audio_sample_rate
                _check_seconds(seconds, seconds_before, max_seconds)
            except InvalidInput:
                bitmap.close()
                raise
        return bitmap

    def tokenize(
        self,
        text: str,
        bitmaps: Sequence[Bitmap],
        *,
        add_special: bool,
        parse_special: bool = True,
    ) -> Chunks:
        """Split a prompt holding one `marker` per bitmap (in order) into chunks."""
        ptr = self._live()
        markers = text.count(self.marker)
        if markers != len(bitmaps):
            # libmtmd's return codes for this differ by direction (1 or 2): check it here.
            raise InvalidInput(
                f"the prompt has {markers} media markers for {len(bitmaps)} media",
                subject="prompt",
            )
        data = text.encode("utf-8")
        inp = mtmd.mtmd_input_text()
        inp.text = data
        inp.text_len = len(data)
        inp.add_special = add_special
        inp.parse_special = parse_special
        arr = (mtmd.mtmd_bitmap_p_ctypes * max(len(bitmaps), 1))(*(b.live() for b in bitmaps))
        chunks = Chunks(mtmd.mtmd_input_chunks_init())
        try:
            rc = mtmd.mtmd_tokenize(ptr, chunks.ptr, ctypes.byref(inp), arr, len(bitmaps))
            if rc != 0:
                # 2: preprocessing refused the media (an audio clip for a vision-only
                # projector, an image for an audio one ...).
                raise InvalidInput(f"libmtmd could not tokenize the media ({rc})", subject="image")
            for chunk in chunks:
                if chunk.type == ChunkType.TEXT and min(chunk.text_tokens(), default=0) < 0:
                    # libmtmd frames some projectors' images with tokens it looks up in the
                    # text model's vocabulary (Idefics3: <fake_token_around_image>,
                    # <global-img>); a vocabulary without them yields -1 ids llama_decode
                    # refuses, so the pairing itself is wrong.
                    raise GenerationFailed(
                        f"{self.model.path.name} lacks tokens that {self.path.name} frames "
                        "images with: the projector belongs to another language model"
                    )
        except BaseException:
            chunks.close()
            raise
        return chunks

    def encode(self, chunk: Chunk) -> np.ndarray:
        """Run the encoder and projector on an image or audio chunk: a (n_tokens, n_embd)
        float32 copy of the embeddings the text model reads in place of token embeddings."""
        ptr = self._live()
        if chunk.type == ChunkType.TEXT:
            raise ValueError("text chunks have no media to encode")
        rc = mtmd.mtmd_encode_chunk(ptr, chunk.live())
        if rc != 0:
            raise GenerationFailed(f"libmtmd could not encode the media ({rc})")
        out = mtmd.mtmd_get_output_embd(ptr)
        return np.ctypeslib.as_array(out, shape=(chunk.n_tokens, self.n_embd)).copy()

    def eval_chunks(
        self,
        ctx: Context,
        chunks: Chunks,
        n_past: int,
        seq: int,
        n_batch: int,
        *,
        logits_last: bool = True,
    ) -> int:
        """Decode every chunk into sequence `seq` from position n_past (libmtmd's own loop:
        text in batches of n_batch, media encoded then decoded); returns the new n_past.

        With logits_last, the last token's logits are in batch row -1 of the last decode
        (`ctx.logits(-1)`, as llama_get_logits_ith reads negative rows)."""
        new_n_past = lc.llama_pos(0)
        rc = mtmd.mtmd_helper_eval_chunks(
            self._live(),
            ctx.ptr,
            chunks.live(),
            n_past,
            seq,
            n_batch,
            logits_last,
            ctypes.byref(new_n_past),
        )
        if rc != 0:
            raise GenerationFailed(f"libmtmd could not evaluate the prompt ({rc})")
        return new_n_past.value

    def decode_embeddings(
        self,
        ctx: Context,
        chunk: Chunk,
        embd: np.ndarray,
        n_past: int,
        seq: int,
        n_batch: int,
    ) -> int:
        """Decode an image chunk's embeddings (from `encode`, or a cache of them) into
        sequence `seq` at positions n_past..; returns the new n_past. No logits are kept: a
        prompt goes on with text, whose last token asks for them.

        The scheduler's path: a llama_batch holds tokens or embeddings, never both, so media
        takes decode steps of its own beside text streams."""
        if embd.shape != (chunk.n_tokens, self.n_embd):
            raise ValueError(f"embeddings {embd.shape} != ({chunk.n_tokens}, {self.n_embd})")
        positions = None
        if self.uses_mrope:  # a (time, row, column) position a token, from libmtmd's layout
            positions = chunk.placement().at(n_past, 0, chunk.n_tokens)
        decode_rows(
            ctx, embd, n_past, seq, n_batch, non_causal=self.non_causal(chunk), positions=positions
        )
        return n_past + chunk.n_pos

    def non_causal(self, chunk: Chunk) -> bool:
        """Whether the text model attends bidirectionally within this media chunk (Gemma 3)."""
        return bool(mtmd.mtmd_decode_use_non_causal(self._live(), chunk.live()))

    def close(self) -> None:
        """Free the projector (before its text model)."""
        if self.ptr:
            mtmd.mtmd_free(self.ptr)
            self.ptr = None

    def __enter__(self) -> Projector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
