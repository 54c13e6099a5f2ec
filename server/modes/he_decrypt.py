"""`he` mode's decrypting sites: two of the round's accepted sites decrypt each sum under
independent random masks and must agree bit for bit; a third settles a mismatch, and a site whose
result differs from the agreed one is named (`decrypt_failed`). The masks hide the sum from them."""

from __future__ import annotations

from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.logger import log

from common import wire
from common.secure import he
from server.roster import site_order
from server.rounds import RoundContext, RoundResult, message, send


class Decryptors:
    """The sites that may decrypt this round's sums: the accepted ones, in a rotation that starts
    with the round's turn. Each sum is decrypted by two of them under independent random masks, and
    their results (exact plaintext coefficients) must agree bit for bit; on a mismatch, or when one
    fails or does not answer, the next is asked, until two agree. Every site whose result differs
    from the agreed one is named (`decrypt_failed`) and not asked again this round."""

    def __init__(self, ctx: RoundContext, result: RoundResult, public: bytes, length: int) -> None:
        self.ctx, self.result, self.public, self.length = ctx, result, public, length
        self.sites: list[tuple[str, int]] = []  # (site, node id), as they are accepted
        self.liars: set[str] = set()

    def decrypt(self, summed: he.Summed, agreed_only: bool = False) -> np.ndarray | None:
        """The decrypted sum (first `length` reals), or None if no two decryptions agree. With a
        single decryptor answering its result stands (the check values still guard it), unless
        `agreed_only`."""
        order = sorted((d for d in self.sites if d[0] not in self.liars), key=lambda d: site_order(d[0]))
        start = (self.ctx.server_round - 1) % len(order) if order else 0
        pending = order[start:] + order[:start]
        answers: list[tuple[str, np.ndarray]] = []
        while pending:
            ask = 2 - min(len(answers), 1)
            batch, pending = pending[:ask], pending[ask:]
            answers += self._ask(summed, batch)
            agreed = next((a for i, (_, a) in enumerate(answers) for _, b in answers[i + 1:] if np.array_equal(a, b)),
                          None)
            if agreed is not None:
                self._name_liars(answers, agreed)
                return he.unblind(agreed, np.zeros_like(agreed), self.public, self.length)
        if len(answers) == 1 and not agreed_only:  # every other decryptor failed or was silent: availability first
            return he.unblind(answers[0][1], np.zeros_like(answers[0][1]), self.public, self.length)
        return None

    def _name_liars(self, answers: list[tuple[str, np.ndarray]], agreed: np.ndarray) -> None:
        witnesses = [s for s, a in answers if np.array_equal(a, agreed)]
        for site, coeffs in answers:
            if not np.array_equal(coeffs, agreed):
                self.liars.add(site)
                self.ctx.recorder.audit("decrypt_failed", round=self.ctx.server_round, client=site,
                                        reason=f"its decryption of the sum differs from that of sites {witnesses}")
                log(WARNING, "Round %d: site %s decrypted the sum wrongly", self.ctx.server_round, site)

    def _ask(self, summed: he.Summed, batch: list[tuple[str, int]]) -> list[tuple[str, np.ndarray]]:
        """Ask each site of `batch` (at once) to decrypt `summed` under a fresh mask of its own;
        return (site, the sum's plaintext coefficients) of each that answered well; audit the others."""
        ctx, result = self.ctx, self.result
        masks, messages = {}, []
        for site, node_id in batch:
            blinded, masks[node_id] = he.blind(summed, self.public)
            messages.append(message(ctx, node_id, wire.DECRYPT, RecordDict({
                wire.HE_SUM: ArrayRecord({wire.C0: Array(blinded.c0)}),
                wire.HE_CIPHERTEXTS: ConfigRecord({wire.SEEDS: blinded.seeds}),
                wire.CONFIG: ConfigRecord(ctx.config)})))
            result.bytes_down += blinded.c0.nbytes + sum(map(len, blinded.seeds))
        replies = {r.metadata.src_node_id: r for r in send(ctx, messages, "decrypt")}
        out = []
        for site, node_id in batch:
            reply, reason = replies.get(node_id), "no reply in time"
            if reply is not None and reply.has_error():
                reason = f"error: {reply.error.reason}"
            elif reply is not None:
                record = reply.content.get(wire.DECRYPTED)
                array = record.get(wire.COEFFICIENTS) if isinstance(record, ArrayRecord) else None
                reason = "reply holds no coefficients of the expected shape"
                if isinstance(array, Array) and array.dtype == "uint64" and tuple(array.shape) == masks[node_id].shape:
                    result.bytes_up += len(array.data)
                    try:
                        out.append((site, he.remove_mask(array.numpy(), masks[node_id], self.public)))
                        ctx.recorder.audit("sum_decrypted", round=ctx.server_round, client=site,
                                           sites=len(summed.seeds))
                        log(INFO, "Round %d: site %s decrypted a blinded sum", ctx.server_round, site)
                        continue
                    except (he.HEError, ValueError) as exc:
                        reason = f"bad coefficients: {exc}"
            ctx.recorder.audit("decrypt_failed", round=ctx.server_round, client=site, reason=reason)
            log(WARNING, "Round %d: site %s did not decrypt the sum (%s)", ctx.server_round, site, reason)
        return out
