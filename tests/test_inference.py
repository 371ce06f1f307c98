"""`inference()` keeps torch.compile off on CPU for every model thread at once.

moshi's `no_compile()` saves and restores one process-wide flag; with the STT, TTS and Moshi stepping
on their own threads, a thread that left restored "compile on" while another was mid-step, and that
one's next lazily compiled function started a torch.compile: a model thread stalled for seconds, its
queue overflowed, and the cascade's final transcripts came late from then on. The interleaving is
forced here with events, so the test does not depend on timing.
"""

from __future__ import annotations

import threading

import torch
from moshi.utils import compile as moshi_compile
from moshi.utils.compile import no_compile

from duplex.models.inference import inference

CPU = torch.device("cpu")


def test_compile_stays_off_while_any_thread_steps():
    assert moshi_compile._compile_disabled is False
    a_inside, b_inside, a_left, b_may_leave = (threading.Event() for _ in range(4))
    seen: list[bool] = []

    def a() -> None:
        with inference(CPU):
            a_inside.set()
            b_inside.wait(5)
        a_left.set()

    def b() -> None:
        a_inside.wait(5)
        with inference(CPU):
            b_inside.set()
            a_left.wait(5)
            seen.append(moshi_compile._compile_disabled)   # A has left, B is still stepping
            with no_compile():                              # as moshi's layers do inside a step
                pass
            seen.append(moshi_compile._compile_disabled)
            b_may_leave.wait(5)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    threads[0].join(5)
    b_may_leave.set()
    threads[1].join(5)
    assert seen == [True, True]
    assert moshi_compile._compile_disabled is False   # restored once every thread is out
