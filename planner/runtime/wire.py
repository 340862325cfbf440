"""Messages between runtime processes: a fixed header and up to two tensors.

Every message is an ``int64`` header of :data:`HEADER_LEN` fields, then (if the header says so) one
``uint8`` payload holding a ``float32`` tensor and an ``int64`` tensor back to back: two
point-to-point transfers per message (each transfer waits for the receiver to take it, so fewer is
faster). The header gives the kind, an identifier (a pass or a call), two kind-specific fields, the
shapes of the two tensors (up to three and two dimensions), the propagation delay (microseconds)
that the receiver waits before the message counts as arrived (the emulated link's RTT/2), and,
where the processes share a clock, the time it is due (monotonic microseconds: when its last byte
left the emulated link plus the delay; 0 when unknown).

``PASS`` (ident: pass id; a: phase, 0 prefill or 1 decode; b: slot): floats = hidden states or codec
latents ``[n, S, W]`` (none into the first stage); ints ``[n, 2 + S']`` = request id, first
position, then the ``S'`` token ids (into the first stage only).

``RESULT`` (pass id, phase, slot): ints ``[n, 2]`` = request id, sampled token.

``EXPERT_CALL`` (ident: call id; a: layer; b: pass id): floats ``[N, H + k]`` = hidden rows, then
the slots' weights; ints ``[N, k]`` = global expert ids (-1: not this device's).
``EXPERT_REPLY`` (call id, layer, pass id): floats ``[N, H]``.

``STOP`` and ``HEARTBEAT``: the header alone (control messages: not charged to the links).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

HEARTBEAT, PASS, RESULT, EXPERT_CALL, EXPERT_REPLY, STOP = range(6)
KIND_NAMES = ("heartbeat", "pass", "result", "expert call", "expert reply", "stop")
PREFILL, DECODE = 0, 1
HEADER_LEN = 11  # kind, ident, a, b, floats shape (3), ints shape (2), delay us, due us
HEADER_BYTES = HEADER_LEN * 8


@dataclass
class Message:
    kind: int
    ident: int = 0
    a: int = 0
    b: int = 0
    floats: torch.Tensor | None = None
    ints: torch.Tensor | None = None
    delay_s: float = 0.0  # propagation the receiver applies (set by the sending link)
    due_s: float = 0.0  # monotonic time the message is due at the receiver (0: now + delay_s)

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: header and tensors."""
        n = HEADER_BYTES
        if self.floats is not None:
            n += self.floats.numel() * self.floats.element_size()
        if self.ints is not None:
            n += self.ints.numel() * self.ints.element_size()
        return n

    def header(self) -> torch.Tensor:
        fs = list(self.floats.shape) if self.floats is not None else []
        ins = list(self.ints.shape) if self.ints is not None else []
        if len(fs) > 3 or len(ins) > 2:
            raise ValueError(f"floats of up to 3 and ints of up to 2 dimensions travel, got {fs} and {ins}")
        fs = fs + [0] * (3 - len(fs)) if fs else [0, 0, 0]
        ins = ins + [0] * (2 - len(ins)) if ins else [0, 0]
        return torch.tensor([self.kind, self.ident, self.a, self.b, *fs, *ins, round(self.delay_s * 1e6), round(self.due_s * 1e6)],
                            dtype=torch.int64)

    @staticmethod
    def shapes(header: torch.Tensor) -> tuple[list[int] | None, list[int] | None]:
        """The float and int tensor shapes a header announces (None: no tensor)."""
        h = header.tolist()
        fs = [x for x in h[4:7] if x > 0]
        ins = [x for x in h[7:9] if x > 0]
        return (fs or None), (ins or None)

    def payload(self) -> torch.Tensor | None:
        """The floats' and the ints' bytes in one ``uint8`` tensor (None: neither)."""
        parts = [t.contiguous().view(-1).view(torch.uint8) for t in (self.floats, self.ints) if t is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @staticmethod
    def payload_bytes(header: torch.Tensor) -> int:
        fs, ins = Message.shapes(header)
        return 4 * (math.prod(fs) if fs else 0) + 8 * (math.prod(ins) if ins else 0)

    @classmethod
    def from_parts(cls, header: torch.Tensor, payload: torch.Tensor | None) -> Message:
        h = header.tolist()
        fs, ins = cls.shapes(header)
        floats = ints = None
        if payload is not None:
            nf = 4 * math.prod(fs) if fs else 0
            if fs:
                floats = payload[:nf].view(torch.float32).view(fs)
            if ins:
                ints = payload[nf:].view(torch.int64).view(ins)
        return cls(h[0], h[1], h[2], h[3], floats, ints, h[9] / 1e6, h[10] / 1e6)
