"""The batched duplex model behind `duplex eval --offline`: `MoshiBatch` as the server loads it (the same
composition root, `server/loading.py`: weights, device, dtype, CPU threads, warm-up), seen as a
`FrameModel` (offline.py). torch and the models are imported here only, when an offline run starts."""

from __future__ import annotations

import typing as tp

import numpy as np

if tp.TYPE_CHECKING:
    from ..models.moshi_batch import MoshiBatch


class MoshiRows:
    """A `FrameModel` over `MoshiBatch`: row r is slot r. A row that starts gets what a slot gets when a
    conversation takes it: its sampling, the model's defaults updated by the config (`configure_slot`), a reset
    and `first` on its first frame (moshi's encoder-state skip), in the same step."""

    def __init__(self, model: MoshiBatch):
        self.model = model
        self.rows = model.slots
        self._starting = np.zeros(self.rows, dtype=bool)
        self._none = np.zeros(self.rows, dtype=bool)

    def start(self, row: int, config: dict) -> None:
        self.model.configure_slot(row, self.model.defaults.updated(config))
        self._starting[row] = True

    def step(self, pcm: np.ndarray, active: np.ndarray) -> np.ndarray:
        from ..models.moshi_batch import StepInput

        starting = self._starting & active
        out = self.model.step(StepInput(pcm=pcm, execute=active, reset=starting, first=starting.copy(),
                                        force_silence=self._none))
        self._starting &= ~starting
        return out.pcm


def load_rows(preset: str, moshi_spec: str | None, rows: int, device: str, dtype: str, threads: int,
              quiet: bool = False) -> tuple[MoshiRows, dict]:
    """The preset's duplex model (or `moshi_spec`) with `rows` slots, as `duplex serve` would load it with
    `--slots rows`; and what it is, for results.json. Raises the server's StartupError / WeightsUnavailable."""
    from ..models.spec import PRESETS
    from ..server.loading import load_duplex_model, pick_device, pick_dtype, set_cpu_threads
    from ..server.options import ServeOptions

    if preset not in PRESETS:
        raise ValueError(f"no preset {preset!r}; known: {', '.join(sorted(PRESETS))}")

    options = ServeOptions(preset=preset, moshi_spec=moshi_spec, slots=rows, device=device, dtype=dtype,
                           threads=threads, no_cascade=True, quiet_progress=quiet)
    picked = pick_device(device)
    used_threads = set_cpu_threads(threads, picked)
    torch_dtype = pick_dtype(dtype, picked)
    model = load_duplex_model(options, picked, torch_dtype)
    about = {"preset": preset, "moshi_spec": moshi_spec, "rows": rows, "device": picked,
             "dtype": str(torch_dtype).removeprefix("torch."), "threads": used_threads}
    return MoshiRows(model), about
