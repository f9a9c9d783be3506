"""The git command line, for pull mode and ``kaiser plan --rev``. Moves data,
decides nothing (engine/gitops.py decides).

Every call runs ``git`` with no terminal and no prompt (``GIT_TERMINAL_PROMPT=0``,
a new session, stdin closed): a remote that wants a password fails instead of
hanging; credentials come from the environment of ``kaiser run`` (an SSH deploy
key, a credential helper: docs/gitops.md). Each call has a time limit; the async
ones kill git when they are cancelled (server shutdown).

:class:`Mirror` is the server's clone: a bare repository that follows one branch
of the remote (``refs/remotes/origin/BRANCH``, force-pushes included) and
checks commits out into worktrees of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from engine.errors import KaiserError
from engine.gitops import Commit, redact

#: seconds: a fetch may take this long, everything else much less
FETCH_TIMEOUT = 120.0
LOCAL_TIMEOUT = 30.0


class GitError(KaiserError):
    """A git command failed; the text is git's own message (credentials redacted)."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C", GIT_OPTIONAL_LOCKS="0")
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    return env


def _failure(args: tuple[str, ...], code: int | None, err: bytes) -> GitError:
    text = err.decode("utf-8", "replace").strip() or f"exit code {code}"
    lines = [x for x in text.splitlines() if x.strip()]
    # git's last lines say what went wrong; the rest is progress and hints
    msg = "; ".join(lines[-3:])
    rest = list(args[2:] if args[:1] == ("--git-dir",) else args)
    verb = next((a for a in rest if not a.startswith("-")), "")
    return GitError(redact(f"git {verb}: {msg}"))


def run(*args: str, cwd: Path | None = None, timeout: float = LOCAL_TIMEOUT) -> str:
    """Run ``git ARGS`` and return its standard output. Raises GitError."""
    try:
        r = subprocess.run(["git", *args], cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=timeout, check=False, start_new_session=True)
    except FileNotFoundError:
        raise GitError("git is not installed (pull mode and --rev need the git command line)") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0] if args else ''}: no answer within {timeout:g} s") from None
    if r.returncode != 0:
        raise _failure(args, r.returncode, r.stderr)
    return r.stdout.decode("utf-8", "replace")


async def arun(*args: str, cwd: Path | None = None, timeout: float = LOCAL_TIMEOUT) -> str:
    """:func:`run` without blocking the event loop; git is killed on timeout or
    cancellation. Raises GitError."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "git", *args, cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        raise GitError("git is not installed (pull mode needs the git command line)") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        raise GitError(f"git {args[0] if args else ''}: no answer within {timeout:g} s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
    if proc.returncode != 0:
        raise _failure(args, proc.returncode, err)
    return out.decode("utf-8", "replace")


_LOG_FORMAT = "%H%x00%an <%ae>%x00%at%x00%s%x00%B"


def _commit(text: str) -> Commit:
    sha, author, at, subject, body = (text.split("\x00", 4) + [""] * 5)[:5]
    return Commit(sha.strip(), author, float(at or 0), subject, body.strip()[:4000])


@dataclass(frozen=True, slots=True)
class Mirror:
    """The server's clone of ``url`` (a bare repository at ``git_dir``) following
    ``branch``; worktrees go below ``worktrees``."""

    git_dir: Path
    worktrees: Path
    url: str
    branch: str

    @property
    def ref(self) -> str:
        return f"refs/remotes/origin/{self.branch}"

    def _git(self) -> tuple[str, ...]:
        return ("--git-dir", os.fspath(self.git_dir))

    async def ensure(self) -> None:
        """Create the bare repository (no network) or point it at ``url``."""
        if not (self.git_dir / "HEAD").exists():
            self.git_dir.parent.mkdir(parents=True, exist_ok=True)
            await arun("init", "--quiet", "--bare", os.fspath(self.git_dir))
            await arun(*self._git(), "remote", "add", "origin", self.url)
        else:
            try:
                current = (await arun(*self._git(), "remote", "get-url", "origin")).strip()
            except GitError:
                await arun(*self._git(), "remote", "add", "origin", self.url)
                current = self.url
            if current != self.url:
                await arun(*self._git(), "remote", "set-url", "origin", self.url)
        self.worktrees.mkdir(parents=True, exist_ok=True)

    async def fetch(self, timeout: float = FETCH_TIMEOUT) -> str:
        """Fetch the branch (force-pushes too) and return its head commit hash."""
        await arun(*self._git(), "fetch", "--quiet", "--no-tags", "--prune", "origin",
                   f"+refs/heads/{self.branch}:{self.ref}", timeout=timeout)
        return (await arun(*self._git(), "rev-parse", "--verify", f"{self.ref}^{{commit}}")).strip()

    async def commit(self, sha: str) -> Commit:
        """Author, time and message of a fetched commit."""
        return _commit(await arun(*self._git(), "log", "-1", f"--format={_LOG_FORMAT}", sha, "--"))

    async def checkout(self, sha: str, dest: Path) -> None:
        """A fresh worktree of ``sha`` at ``dest`` (a leftover there is removed first)."""
        if dest.exists():
            await self.remove(dest)
        await arun(*self._git(), "worktree", "add", "--quiet", "--detach", "--force", os.fspath(dest), sha)

    async def remove(self, dest: Path) -> None:
        """Remove a worktree; never raises for one that is half gone."""
        with contextlib.suppress(GitError):
            await arun(*self._git(), "worktree", "remove", "--force", os.fspath(dest))
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        with contextlib.suppress(GitError):
            await arun(*self._git(), "worktree", "prune")


# --------------------------------------------------------------------------
# kaiser plan --rev


def repo_of(path: Path) -> tuple[Path, str]:
    """The top of the work tree ``path`` is in, and ``path`` relative to it. Raises GitError."""
    where = path if path.is_dir() else path.parent
    top = run("rev-parse", "--show-toplevel", cwd=where).strip()
    prefix = run("rev-parse", "--show-prefix", cwd=where).strip().rstrip("/")
    if not path.is_dir():
        prefix = f"{prefix}/{path.name}" if prefix else path.name
    return Path(top), prefix or "."


def resolve(ref: str, *, git_dir: Path | None = None, cwd: Path | None = None) -> str:
    """The commit hash ``ref`` names, in a bare clone (``git_dir``: also tried as
    ``origin/REF``) or the work tree at ``cwd``. Raises GitError."""
    base = ("--git-dir", os.fspath(git_dir)) if git_dir is not None else ()
    tried = [ref] if git_dir is None else [ref, f"refs/remotes/origin/{ref}"]
    last: GitError | None = None
    for name in tried:
        if name.startswith("-"):
            raise GitError(f"not a revision: {ref!r}")
        try:
            return run(*base, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}", cwd=cwd).strip()
        except GitError as exc:
            last = exc
    raise GitError(f"unknown revision {ref!r}") from last


def export(sha: str, path: str, dest: Path, *, git_dir: Path | None = None, cwd: Path | None = None) -> Path:
    """Write the files below ``path`` at commit ``sha`` into ``dest`` (``git
    archive``: nothing in the repository changes) and return ``dest / path``.
    Raises GitError."""
    base = ["--git-dir", os.fspath(git_dir)] if git_dir is not None else []
    args = [*base, "archive", "--format=tar", sha]
    if path not in ("", "."):
        args += ["--", path]
    try:
        r = subprocess.run(["git", *args], cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=LOCAL_TIMEOUT, check=False, start_new_session=True)
    except FileNotFoundError:
        raise GitError("git is not installed (--rev needs the git command line)") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git archive: no answer within {LOCAL_TIMEOUT:g} s") from None
    if r.returncode != 0:
        raise _failure(tuple(args), r.returncode, r.stderr)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / path if path not in ("", ".") else dest
