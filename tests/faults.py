"""A deterministic fault injector: the process "dies" at its N-th file operation.

Count the operations of an uninterrupted call (`Faults()`), then repeat the call once for
every n in 1..N with `Faults(kill_at=n)`, and run whatever recovery is under test after each
kill: every write of every step is reached, the last included, in a fixed order, with no
timing involved.

`patch_files` patches the layer every writer of a run directory goes through:
`rundir.write_atomic`'s write callback (the kill lands half-way through the bytes of the
temporary file), `os.replace` (the kill lands before the rename, the temporary file complete)
and `os.unlink`. `patch` counts any other callable the same way (a child's start, say).

A kill raises `Killed`, a BaseException that no handler of the library catches. From the kill
on, every patched operation raises it again, so cleanup code in `except` and `finally` blocks
cannot do what a SIGKILLed process would never do (a killed write leaves its temporary file
behind, as it would).
"""

from __future__ import annotations

import io
import os

from reproresnet import rundir


class Killed(BaseException):
    """The simulated death of the process."""


class Faults:
    """Counts the patched operations and kills the process at the `kill_at`-th (never if None)."""

    def __init__(self, kill_at: int | None = None):
        self.kill_at, self.dead, self.operations = kill_at, False, []

    def step(self, what: str) -> bool:
        """Count one operation; True if the process dies in it (the caller then raises Killed)."""
        if self.dead:
            raise Killed(f"already dead (killed at operation {self.kill_at})")
        self.operations.append(what)
        self.dead = len(self.operations) == self.kill_at
        return self.dead

    def patch(self, monkeypatch, owner, name: str) -> None:
        """Count every call of `owner.name`; the kill lands before the call."""
        real = getattr(owner, name)

        def counted(*args, **kwargs):
            if self.step(f"{name} {args[0] if args else ''}"):
                raise Killed(f"killed before {name} (operation {self.kill_at})")
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    def patch_files(self, monkeypatch) -> "Faults":
        real_write_atomic = rundir.write_atomic

        def write_atomic(path, write):
            def counted(file):
                if self.step(f"write {path}"):
                    buffer = io.BytesIO()
                    write(buffer)
                    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    file.flush()
                    raise Killed(f"killed half-way through writing {path} (operation {self.kill_at})")
                write(file)
            return real_write_atomic(path, counted)

        monkeypatch.setattr(rundir, "write_atomic", write_atomic)
        self.patch(monkeypatch, os, "replace")
        self.patch(monkeypatch, os, "unlink")
        return self
