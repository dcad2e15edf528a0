"""Real public data the simulator draws from: LLM token lengths and daily demand shapes.

Read once per process from ``../shared/data`` beside the repository root (never downloaded):

- ``azure_llm_inference_2023`` (Patel et al., *Splitwise*, ISCA 2024; CC-BY-4.0): context / generated tokens of
  production Azure code-completion and conversation requests.
- ``mooncake_traces`` (Qin et al., *Mooncake*, FAST 2025; Apache-2.0): long-context chat input / output lengths
  (rag prompts, and the long-prompt pool of the KV-cache incident).
- ``servegen`` (Xiang et al., arXiv:2505.09999; Apache-2.0): total request rate per 10-minute window over 14 days
  for three language models, averaged into a time-of-day shape.

When the folder is missing (an installed wheel, a stripped checkout) documented parametric stand-ins are used and
``source`` says so; the simulation stays deterministic either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

#: repository root / .. / shared / data; ``ROOTWISE_SHARED_DATA`` overrides it
DATA_DIR = Path(
    os.environ.get("ROOTWISE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)

#: prompts at least this long are the "long prompt" pool (KV-cache pressure)
LONG_PROMPT_TOKENS = 32_768


@dataclass(frozen=True)
class TokenPool:
    """Empirical token lengths: (input, output) pairs sampled together (their joint distribution), or, when
    ``joint`` is false, inputs and outputs drawn independently from two traces."""

    name: str
    input: np.ndarray  # int64
    output: np.ndarray  # int64
    joint: bool = True

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, self.input.size, n)
        if self.joint:
            return self.input[idx], self.output[idx]
        return self.input[idx], self.output[rng.integers(0, self.output.size, n)]


@dataclass(frozen=True)
class Sources:
    """Token pools by name and time-of-day demand shapes (1440 values, mean 1) by servegen model."""

    pools: dict[str, TokenPool]
    daily: dict[str, np.ndarray]
    source: str  # "shared-data" or "parametric"


def _parametric_pool(name: str, in_median: float, out_median: float, n: int = 20_000) -> TokenPool:
    rng = np.random.default_rng(12345)
    inp = np.clip(np.rint(rng.lognormal(np.log(in_median), 0.9, n)), 2, 128_000).astype(np.int64)
    out = np.clip(np.rint(rng.lognormal(np.log(out_median), 0.8, n)), 1, 2_000).astype(np.int64)
    return TokenPool(name, inp, out)


def _daily_from_servegen(path: Path) -> np.ndarray:
    rate = pl.read_csv(path)["total_rate_rps"].to_numpy()
    per_window = rate[: rate.size // 144 * 144].reshape(-1, 144).mean(axis=0)
    # circular 30-minute moving average: the 10-minute windows are noisy
    smooth = (np.roll(per_window, 1) + per_window + np.roll(per_window, -1)) / 3.0
    minute = np.arange(1440)
    shape = np.interp(minute, np.arange(144) * 10 + 5, smooth, period=1440)
    return shape / shape.mean()


def _parametric_daily(peak_hour: float, amplitude: float) -> np.ndarray:
    minute = np.arange(1440)
    shape = 1.0 + amplitude * np.cos(2 * np.pi * (minute / 60.0 - peak_hour) / 24.0)
    return shape / shape.mean()


@lru_cache(maxsize=1)
def load_sources() -> Sources:
    """Load the shared data once (cached for the process)."""
    azure = DATA_DIR / "azure_llm_inference_2023" / "data"
    mooncake = DATA_DIR / "mooncake_traces" / "FAST25-release" / "traces" / "conversation_trace.jsonl"
    servegen = DATA_DIR / "servegen" / "derived"
    try:
        pools = {}
        for name, file in (
            ("azure_code", "AzureLLMInferenceTrace_code.csv"),
            ("azure_conv", "AzureLLMInferenceTrace_conv.csv"),
        ):
            frame = pl.read_csv(azure / file, columns=["ContextTokens", "GeneratedTokens"])
            pools[name] = TokenPool(
                name,
                frame["ContextTokens"].to_numpy().astype(np.int64),
                frame["GeneratedTokens"].to_numpy().astype(np.int64),
            )
        moon = pl.read_ndjson(mooncake).select("input_length", "output_length")
        inp = moon["input_length"].to_numpy().astype(np.int64)
        out = np.maximum(moon["output_length"].to_numpy().astype(np.int64), 1)
        pools["mooncake"] = TokenPool("mooncake", inp, out)
        long = inp >= LONG_PROMPT_TOKENS
        pools["mooncake_long"] = TokenPool("mooncake_long", inp[long], out[long])
        # rag: long-context prompts (question + retrieved chunks) with conversational answer lengths
        pools["rag"] = TokenPool("rag", inp, pools["azure_conv"].output, joint=False)
        daily = {
            m: _daily_from_servegen(servegen / f"aggregate_rate_language_{m}.csv")
            for m in ("m-small", "m-mid", "m-large")
        }
        return Sources(pools, daily, "shared-data")
    except (OSError, pl.exceptions.PolarsError):
        pools = {
            "azure_code": _parametric_pool("azure_code", 1469, 13),
            "azure_conv": _parametric_pool("azure_conv", 1020, 129),
            "mooncake": _parametric_pool("mooncake", 6909, 350),
        }
        long_in = np.clip(pools["mooncake"].input * 6, LONG_PROMPT_TOKENS, 128_000)
        pools["mooncake_long"] = TokenPool("mooncake_long", long_in, pools["mooncake"].output)
        pools["rag"] = TokenPool("rag", pools["mooncake"].input, pools["azure_conv"].output, joint=False)
        daily = {
            "m-small": _parametric_daily(20, 0.35),
            "m-mid": _parametric_daily(12, 0.15),
            "m-large": _parametric_daily(17, 0.15),
        }
        return Sources(pools, daily, "parametric")
