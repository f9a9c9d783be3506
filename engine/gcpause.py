"""The cyclic garbage collector paused while a deployment is built.

Loading, checking and compiling 10,000 rules makes about a million objects the
collector tracks (the YAML tree, the model, the compiled program) and almost no
cycles to free: its passes over them were half the build time (3 of 6 CPU
seconds, docs/performance.md "Memory and scale"), each full pass walking
everything made so far. Reference counting still frees everything that is not
in a cycle.

Resuming as is would leave every object made in the block in the youngest
generation, and the first collection after it would walk them all (a quarter
of a second for 10,000 rules), then the next generation's again. When nothing
is frozen, the block's objects go straight to the oldest generation instead
(``gc.freeze`` then ``gc.unfreeze``: two list splices, no walk), where the next
full collection looks at them as at any long-lived object. When something is
frozen (the server froze its start-up heap, engine/app.py ``_tune_gc``) that is
left alone: unfreezing it would bring back the full-collection pauses the
freeze avoids.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collection inside the block; it resumes after, if it was on.

    Nested and concurrent uses (a reload in a worker thread) are safe: the one
    that found the collector on turns it back on."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()
