"""One exception tree. Every error carries what it is about and says what to do next."""

from __future__ import annotations

import errno as _errno
import os


class PatchbayError(Exception):
    """Base of every error patchbay raises."""


class TopologyError(PatchbayError):
    """A lab description that cannot be built: names the node and the field. Mistakes in a
    topology file also name the file, the line (best effort) and the key path."""

    def __init__(
        self, message: str, *, node: str | None = None, field: str | None = None,
        file: str | os.PathLike[str] | None = None, line: int | None = None, key: str | None = None,
    ) -> None:
        self.message = message  # without the prefixes, for callers that re-raise it elsewhere
        self.node = node
        self.field = field
        self.file = None if file is None else str(file)
        self.line = line
        self.key = key
        prefix = ""
        if node is not None:
            prefix = f"{node}: " if field is None else f"{node}.{field}: "
        where = ""
        if self.file is not None or line is not None:
            where = (self.file or "<topology>") + (f":{line}" if line is not None else "") + ": "
        if key is not None:
            where += f"{key}: "
        super().__init__(where + prefix + message)


class NodeGone(PatchbayError):
    """The node behind a handle was removed (or its lab closed)."""

    def __init__(self, node: str) -> None:
        self.node = node
        super().__init__(f"{node}: the node was removed or its lab closed; make a new one")


class UsernsUnavailable(PatchbayError):
    """The kernel refuses unprivileged user namespaces; names the sysctl to change."""

    def __init__(self, message: str, *, sysctl: str | None = None) -> None:
        self.sysctl = sysctl
        super().__init__(message)


class KernelFeatureMissing(PatchbayError):
    """A kernel feature the lab needs is not there; names it and the fix."""

    def __init__(self, feature: str, fix: str) -> None:
        self.feature = feature
        self.fix = fix
        super().__init__(f"kernel feature missing: {feature}. {fix}")


class NetlinkError(PatchbayError):
    """A kernel request failed: keeps the errno, the operation and the node."""

    def __init__(self, operation: str, errno: int, *, node: str | None = None, detail: str = "") -> None:
        self.operation = operation
        self.errno = errno
        self.node = node
        self.detail = detail
        name = _errno.errorcode.get(errno, str(errno))
        text = f"{operation}: {os.strerror(errno)} ({name})"
        if detail:
            text += f": {detail}"
        if node is not None:
            text = f"{node}: {text}"
        super().__init__(text)


class NftError(NetlinkError):
    """An nftables transaction was refused; `detail` is nft's own message."""


class SimError(PatchbayError):
    """A sim file that cannot run: names the file, the line, the key path and the step.
    `message` is the text without them."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, step: str | None = None,
        key: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.step = step
        self.key = key
        self.message = message
        where = file or ""
        if line is not None:
            where += f":{line}"
        if step is not None:
            where += f" (step {step})"
        text = f"{key}: {message}" if key else message
        super().__init__(f"{where}: {text}" if where else text)
