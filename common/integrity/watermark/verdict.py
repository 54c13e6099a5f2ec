"""Which of three findings a check is: intact, tampered, or no watermark under this key and context.

A block's 32-bit tag is (H_a(words) + PRF(tensor, block, context)) mod 2^32 (tags.py). Under a
wrong key or context, or on a model that was never watermarked, the PRF pad the check computes is
independent of whatever the low bits hold, so each block's tag holds with probability 2^-32,
independently of the others (side tensors carry 64-bit HMACs: 2^-64, smaller still). Under the
right key an intact model has every tag holding, and a tampered one all but the blocks changed.

The rule: the model carries this key's watermark iff at least `threshold(n)` of its n blocks hold,
where threshold(n) is the smallest t >= 1 with (n p)^t / t! <= 2^-40, p = 2^-32. Under a wrong key
the number of holding blocks is Binomial(n, p), and P[Binomial(n, p) >= t] <= C(n, t) p^t <=
(n p)^t / t!, so a wrong key, a wrong context or an unmarked file is called `tampered` with
probability at most 2^-40 (about 9.1e-13) whatever the model's size. t is 2 below 5,793 blocks
(64 parameters a block: 370,752 parameters), 3 below 756,155 blocks (48 M parameters), 4 below
9,283,521 blocks (594 M parameters). A model of a single block needs that block (bound 2^-32).
The other false verdict: a model of this key is called
`not-watermarked-under-this-key` only when fewer than t blocks survive, i.e. when a tamperer
rewrote all but at most t - 1 blocks; nothing of the watermark is then left to find, and the
verdict says so (exit 1 either way: the file is not the published model).
"""

from __future__ import annotations

import math

INTACT = "intact"
TAMPERED = "tampered"
NOT_WATERMARKED = "not-watermarked-under-this-key"

TAG_HOLDS_BY_CHANCE = 2.0**-32  # one block's tag under a wrong key or context
FALSE_VERDICT_BOUND = 2.0**-40  # P[a wrong key / unmarked file is called tampered] at most this


def threshold(blocks: int) -> int:
    """The fewest holding blocks that show a model carries this key's watermark (module docstring)."""
    t = 1
    while t < blocks and false_verdict_bound(blocks, t) > FALSE_VERDICT_BOUND:
        t += 1
    return t


def false_verdict_bound(blocks: int, t: int) -> float:
    """(n p)^t / t!: the bound on P[at least t of n blocks hold by chance]."""
    mean = blocks * TAG_HOLDS_BY_CHANCE
    return math.exp(t * math.log(mean) - math.lgamma(t + 1))


def verdict_of(total_blocks: int, tampered_blocks: int, has_problems: bool) -> str:
    """intact (every block holds, no manifest problem), tampered, or not watermarked under this key."""
    holding = total_blocks - tampered_blocks
    if total_blocks and holding < threshold(total_blocks):
        return NOT_WATERMARKED
    return INTACT if tampered_blocks == 0 and not has_problems else TAMPERED
