"""The masked-aggregation protocol's computations, Flower-free (SecAgg+ stages, DESIGN.md §3).

A round in `--secure-mode masked` (server/modes/masked.py and client/modes/masked.py carry the bytes):

1. **setup** - each site makes two X25519 key pairs (pairwise masks; share encryption) and sends
   the public halves with its number of examples, sealed with its round key (`advertise`).
2. **share keys** - the server sends the *roster* (sites, public keys, example counts, neighbour
   graph, threshold, clipping range), signed with its Ed25519 key. Each site checks it, draws a
   32-byte self-mask seed, Shamir-shares the seed and its mask private key among its neighbours
   and encrypts each neighbour's shares for that neighbour only (`MaskedSite.share_keys`); it
   also sends a SHA-256 commitment to its seed so the server can check the rebuilt seed.
3. **masked update** - the server forwards the encrypted shares; each site decrypts the ones for
   it, trains, and sends `mask_update(p * delta)` with its self mask and one pairwise mask per
   neighbour whose shares it received (the partner list goes along, sealed), plus a per-chunk
   seal of the masked vector in its own record (`MaskedSite.mask`).
4. **unmask** - the server checks each vector's seal (a failing site becomes a dropout), then
   asks the survivors for the seed shares of survivors and the mask-key shares of dropouts
   (`MaskedSite.reveal`: a site never reveals both kinds for one site); `unmask` rebuilds the
   secrets, checks each against its commitment or public key, removes the masks, and returns
   the exact integer sum of the survivors' quantized updates.

Weights: each site sends `p_i * delta_i` with `p_i = n_i / sum(n)` over the roster; n_i travels in
the clear at setup, as it does in `none` mode and in Flower's SecAgg+ (its FitRes carries
num_examples). The server divides the sum by the survivors' sum of p, so a dropout does not bias
the mean. Sending p_i * delta keeps the error bound independent of the example counts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
from dataclasses import dataclass
from dataclasses import field as dc_field

import numpy as np

from common.errors import InputError
from common.kdf import derive_round_key
from common.secure import masking
from common.secure import secret_shares as ss
from common.secure.masking import Quantizer

SEED_SHARE = "seed"
KEY_SHARE = "key"
ADVERT = "masked-advert"
SHARES = "masked-shares"
MASKED = "masked-vector"
REVEAL = "masked-reveal"
_COMMIT_TAG = b"fedseal/masked/seed-commitment/v1"
_SHARE_DIGEST_TAG = b"fedseal/masked/share-digest/v1"


ROUND_KEY_PURPOSE = "masked"


def round_key(seal_key: bytes, run_name: str, server_round: int, site: str) -> bytes:
    """The key a site seals every masked-mode message of a round with (HKDF of its seal key,
    bound to run, round and site); the server derives the same from its copy."""
    return derive_round_key(seal_key, run_name, server_round, site, ROUND_KEY_PURPOSE)


class ProtocolError(InputError):
    """A protocol message is inconsistent (bad roster, unknown site, too few neighbours...);
    `culprit`: the site proven at fault, when the protocol can tell."""

    def __init__(self, message: str, culprit: str | None = None):
        super().__init__(message)
        self.culprit = culprit


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def default_threshold(neighbourhood: int) -> int:
    """Shares needed to rebuild a secret: a majority of a site's neighbourhood (itself
    included), at least 2, so no minority of sites can rebuild both a seed and a key."""
    return max(2, neighbourhood // 2 + 1)


def neighbour_graph(sites: list[str], degree: int | None = None, seed: int | None = None) -> dict[str, tuple[str, ...]]:
    """Each site's neighbours (itself excluded). `degree` None or >= len(sites) - 1: all pairs.
    Otherwise SecAgg+'s graph: a ring over a shuffled order, each site linked to the `degree // 2`
    sites on either side (`degree` rounded down to even, >= 2)."""
    sites = sorted(sites, key=masking.order_key)
    if degree is None or degree >= len(sites) - 1:
        return {s: tuple(o for o in sites if o != s) for s in sites}
    half = degree // 2
    if half < 1:
        raise InputError(f"a SecAgg+ neighbour graph needs degree >= 2, got {degree}")
    order = list(sites)
    (random.Random(seed) if seed is not None else random.SystemRandom()).shuffle(order)
    where = {s: i for i, s in enumerate(order)}
    out = {}
    for s in sites:
        i = where[s]
        near = {order[(i + k) % len(order)] for k in range(-half, half + 1)} - {s}
        out[s] = tuple(sorted(near, key=masking.order_key))
    return out


# --- the roster --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Advert:
    """A site's setup reply: its two public keys and its number of examples, sealed."""

    site: str
    mask_key: bytes
    enc_key: bytes
    examples: int
    tag: bytes

    def fields(self, context: bytes) -> tuple:
        return context, self.site, self.mask_key, self.enc_key, self.examples


@dataclass(frozen=True)
class Roster:
    """What the server tells every site after setup (it signs `to_bytes()`)."""

    run_name: str
    server_round: int
    sites: tuple[str, ...]
    mask_keys: dict[str, bytes]
    enc_keys: dict[str, bytes]
    examples: dict[str, int]
    neighbours: dict[str, tuple[str, ...]]
    threshold: int
    clip: float = masking.DEFAULT_CLIP

    def __post_init__(self) -> None:
        if len(set(self.sites)) != len(self.sites) or len(self.sites) < 2:
            raise ProtocolError("a masked round needs at least 2 distinct sites")
        for what in (self.mask_keys, self.enc_keys, self.examples, self.neighbours):
            if set(what) != set(self.sites):
                raise ProtocolError("the roster's keys, examples and neighbours must cover exactly its sites")
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.examples.values()):
            raise ProtocolError("every site's number of examples must be an integer >= 1")
        publics = [*self.mask_keys.values(), *self.enc_keys.values()]
        if len(set(publics)) != len(publics):
            raise ProtocolError("two public keys of the roster are identical")
        for s, near in self.neighbours.items():
            if s in near or not set(near) <= set(self.sites):
                raise ProtocolError(f"site {s!r} has a bad neighbour list")
            if any(s not in self.neighbours[o] for o in near):
                raise ProtocolError("the neighbour graph is not symmetric")
            if not 2 <= self.threshold <= len(near) + 1:
                raise ProtocolError(f"threshold {self.threshold} does not fit site {s!r}'s {len(near) + 1} share holders")
        Quantizer(len(self.sites), self.clip)  # validates the clipping range

    @property
    def context(self) -> bytes:
        return masking.round_context(self.run_name, self.server_round)

    @property
    def quantizer(self) -> Quantizer:
        return Quantizer(len(self.sites), float(self.clip))

    def weight(self, site: str) -> float:
        """The site's FedAvg weight n / sum(n) over the roster."""
        return self.examples[site] / sum(self.examples.values())

    def holders(self, site: str) -> tuple[str, ...]:
        """Who holds shares of `site`'s secrets, in share-index order (itself included)."""
        return tuple(sorted((site, *self.neighbours[site]), key=masking.order_key))

    def to_bytes(self) -> bytes:
        """Canonical encoding (sorted JSON): what the server signs and sites check."""
        return json.dumps({
            "run": self.run_name, "round": self.server_round, "sites": list(self.sites),
            "mask_keys": {s: _b64(k) for s, k in self.mask_keys.items()},
            "enc_keys": {s: _b64(k) for s, k in self.enc_keys.items()},
            "examples": self.examples, "neighbours": {s: list(n) for s, n in self.neighbours.items()},
            "threshold": self.threshold, "clip": float(self.clip),
        }, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Roster:
        """Parse `to_bytes()`; ProtocolError when malformed."""
        try:
            obj = json.loads(bytes(data))
            return cls(str(obj["run"]), int(obj["round"]), tuple(obj["sites"]),
                       {s: _unb64(k) for s, k in obj["mask_keys"].items()},
                       {s: _unb64(k) for s, k in obj["enc_keys"].items()},
                       {s: int(n) for s, n in obj["examples"].items()},
                       {s: tuple(n) for s, n in obj["neighbours"].items()},
                       int(obj["threshold"]), float(obj["clip"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"malformed roster: {exc}") from None

    @classmethod
    def build(cls, run_name: str, server_round: int, adverts: list[Advert], *, degree: int | None = None,
              threshold: int | None = None, clip: float = masking.DEFAULT_CLIP, seed: int | None = None) -> Roster:
        """The roster of the sites whose (already checked) adverts arrived."""
        sites = sorted((a.site for a in adverts), key=masking.order_key)
        graph = neighbour_graph(sites, degree, seed)
        smallest = min(len(n) for n in graph.values()) + 1
        return cls(run_name, server_round, tuple(sites), {a.site: a.mask_key for a in adverts},
                   {a.site: a.enc_key for a in adverts}, {a.site: a.examples for a in adverts}, graph,
                   threshold if threshold is not None else default_threshold(smallest), clip)


def check_advert(advert: Advert, round_key: bytes, run_name: str, server_round: int,
                 accepted: list[Advert] = ()) -> None:
    """Server side, per site: raise MaskSealError unless the advert carries the site's seal for
    this round, ProtocolError unless it fits a roster next to the `accepted` adverts (two 32-byte
    X25519 public keys of its own, distinct from every accepted one; examples an integer >= 1;
    a site id not yet advertised). A bad advert leaves out its site only, never the round."""
    context = masking.round_context(run_name, server_round)
    masking.check_message(advert.tag, round_key, ADVERT, *advert.fields(context))
    for name, key in (("mask", advert.mask_key), ("encryption", advert.enc_key)):
        if len(key) != ss.PUBLIC_LEN:
            raise ProtocolError(f"its {name} public key is {len(key)} bytes, an X25519 key is {ss.PUBLIC_LEN}")
    if advert.mask_key == advert.enc_key:
        raise ProtocolError("its two public keys are identical")
    if isinstance(advert.examples, bool) or not isinstance(advert.examples, int) or advert.examples < 1:
        raise ProtocolError(f"its number of examples must be an integer >= 1, got {advert.examples!r}")
    for other in accepted:
        if other.site == advert.site:
            raise ProtocolError(f"site {advert.site!r} has already advertised in this round")
        if {advert.mask_key, advert.enc_key} & {other.mask_key, other.enc_key}:
            raise ProtocolError(f"a public key equals one of site {other.site!r}'s")


def signed_digest(data: bytes) -> bytes:
    """What the server signs (Ed25519, `common.integrity.keys.sign_digest`) for a roster or an unmask request."""
    return hashlib.sha256(b"fedseal/masked/signed/v1" + bytes(data)).digest()


def unmask_request(context: bytes, survivors, dropouts) -> bytes:
    """Canonical bytes of an unmask request (the server signs them; the site checks)."""
    return json.dumps({"context": _b64(context), "survivors": sorted(survivors), "dropouts": sorted(dropouts)},
                      sort_keys=True, separators=(",", ":")).encode()


def commitment(context: bytes, site: str, seed: bytes) -> bytes:
    """SHA-256 commitment to a site's 32-byte self-mask seed (hiding: the seed is uniform)."""
    return hashlib.sha256(_COMMIT_TAG + ss.field(context) + ss.field(site) + seed).digest()


# --- one site's side ---------------------------------------------------------------------------


@dataclass
class SharesOut:
    """A site's share-keys reply: encrypted shares per neighbour, seed commitment, seal, and the
    dealer's digest of every share it dealt (holder -> seed-share digest + key-share digest), so
    the server can check each share a holder reveals."""

    ciphertexts: dict[str, bytes]
    commitment: bytes
    tag: bytes
    digests: dict[str, bytes] = dc_field(default_factory=dict)


def shares_fields(context: bytes, site: str, out: SharesOut) -> tuple:
    items = [x for dst in sorted(out.ciphertexts) for x in (dst, out.ciphertexts[dst])]
    items += [x for h in sorted(out.digests) for x in (h, out.digests[h])]
    return (context, site, out.commitment, *items)


def share_digest(context: bytes, dealer: str, holder: str, kind: str, share: bytes) -> bytes:
    """SHA-256 of one dealt share, bound to round, dealer, holder and kind (a share is 32 uniform
    bytes plus its index, so the digest hides it)."""
    return hashlib.sha256(_SHARE_DIGEST_TAG + ss.field(context) + ss.field(dealer) + ss.field(holder)
                          + ss.field(kind) + bytes(share)).digest()


def check_revealed(context: bytes, holder: str, kind: str, revealed: dict[str, bytes],
                   dealt: dict[str, SharesOut]) -> tuple[dict[str, bytes], list[str]]:
    """(the shares of `revealed` (owner -> share) that match their dealer's digest for `holder`,
    the owners whose share does not). `kind` is SEED_SHARE or KEY_SHARE."""
    half = 0 if kind == SEED_SHARE else 32
    good, bad = {}, []
    for owner, share in revealed.items():
        expected = dealt[owner].digests.get(holder, b"")[half:half + 32] if owner in dealt else b""
        if len(expected) == 32 and hmac.compare_digest(expected, share_digest(context, owner, holder, kind, share)):
            good[owner] = share
        else:
            bad.append(owner)
    return good, bad


@dataclass
class MaskedUpload:
    """A site's masked reply: the masked vector, its chunk seal, the pairwise partners used, and
    a seal over the partner list."""

    vector: np.ndarray
    seal: bytes
    partners: tuple[str, ...]
    tag: bytes


def upload_fields(context: bytes, site: str, size: int, partners: tuple[str, ...]) -> tuple:
    return (context, site, size, *partners)


@dataclass
class MaskedSite:
    """One site's secrets and progress through a masked round (kept in the site's state between
    the round's messages: `to_state` / `from_state`)."""

    site: str
    run_name: str
    server_round: int
    mask_private: bytes
    mask_public: bytes
    enc_private: bytes
    enc_public: bytes
    seed: bytes = b""
    roster: bytes = b""
    seed_shares: dict[str, bytes] = dc_field(default_factory=dict)  # owner -> my share of its seed
    key_shares: dict[str, bytes] = dc_field(default_factory=dict)  # owner -> my share of its mask key
    stage: str = "setup"

    @classmethod
    def start(cls, site: str, run_name: str, server_round: int) -> MaskedSite:
        """Fresh key pairs for one site and one round."""
        mask_private, mask_public = ss.new_key_pair()
        enc_private, enc_public = ss.new_key_pair()
        return cls(site, run_name, server_round, mask_private, mask_public, enc_private, enc_public)

    @property
    def context(self) -> bytes:
        return masking.round_context(self.run_name, self.server_round)

    def advertise(self, round_key: bytes, examples: int) -> Advert:
        """Stage 1 reply: public keys and number of examples, sealed with the round key."""
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            raise InputError(f"a site's number of examples must be an integer >= 1, got {examples!r}")
        advert = Advert(self.site, self.mask_public, self.enc_public, examples, b"")
        tag = masking.tag_message(round_key, ADVERT, *advert.fields(self.context))
        return Advert(self.site, self.mask_public, self.enc_public, examples, tag)

    def _roster(self) -> Roster:
        if not self.roster:
            raise ProtocolError(f"site {self.site!r} has no roster for round {self.server_round} yet")
        return Roster.from_bytes(self.roster)

    def share_keys(self, roster_bytes: bytes, round_key: bytes) -> SharesOut:
        """Stage 2: check the (signature-checked) roster, draw the seed, share seed and mask key.
        ProtocolError when the roster is not for this site, run and round."""
        if self.stage != "setup":
            raise ProtocolError(f"site {self.site!r}: share-keys asked twice in round {self.server_round}")
        roster = Roster.from_bytes(roster_bytes)
        if (roster.run_name, roster.server_round) != (self.run_name, self.server_round):
            raise ProtocolError("the roster is for another run or round")
        if self.site not in roster.sites or roster.mask_keys[self.site] != self.mask_public \
                or roster.enc_keys[self.site] != self.enc_public:
            raise ProtocolError(f"the roster does not hold site {self.site!r} with its own public keys")
        self.roster, self.seed = bytes(roster_bytes), os.urandom(ss.SECRET_LEN)
        holders = roster.holders(self.site)
        seed_shares = ss.split_secret(self.seed, roster.threshold, len(holders))
        key_shares = ss.split_secret(self.mask_private, roster.threshold, len(holders))
        ciphertexts, digests = {}, {}
        for holder, a, b in zip(holders, seed_shares, key_shares, strict=True):
            digests[holder] = (share_digest(self.context, self.site, holder, SEED_SHARE, a)
                               + share_digest(self.context, self.site, holder, KEY_SHARE, b))
            if holder == self.site:
                self.seed_shares[self.site], self.key_shares[self.site] = a, b
                continue
            try:
                secret = ss.agree(self.enc_private, roster.enc_keys[holder])
            except ss.ShareError:  # a peer with an unusable key gets no shares: no pairwise mask with it
                continue
            ciphertexts[holder] = ss.encrypt_for(secret, self.context, self.site, holder, a + b)
        out = SharesOut(ciphertexts, commitment(self.context, self.site, self.seed), b"", digests)
        out.tag = masking.tag_message(round_key, SHARES, *shares_fields(self.context, self.site, out))
        self.stage = "shared"
        return out

    def receive_shares(self, ciphertexts: dict[str, bytes]) -> list[str]:
        """Stage 3a: decrypt the shares the server forwarded; returns the senders whose shares
        failed (left out: no pairwise mask with them)."""
        roster = self._roster()
        failed = []
        for src, blob in ciphertexts.items():
            if src == self.site or src not in roster.neighbours[self.site]:
                failed.append(src)
                continue
            try:
                plain = ss.decrypt_from(ss.agree(self.enc_private, roster.enc_keys[src]), self.context,
                                        src, self.site, blob)
                seed_share, key_share = plain[:ss.SHARE_LEN], plain[ss.SHARE_LEN:]
                ss.share_index(seed_share), ss.share_index(key_share)
            except ss.ShareError:
                failed.append(src)
                continue
            self.seed_shares[src], self.key_shares[src] = seed_share, key_share
        return failed

    def partners(self) -> tuple[str, ...]:
        """The neighbours this site masks pairwise with: those whose shares it holds."""
        roster = self._roster()
        return tuple(o for o in roster.neighbours[self.site] if o in self.key_shares)

    def mask(self, delta: np.ndarray, round_key: bytes, checks: np.ndarray | None = None) -> MaskedUpload:
        """Stage 3b: the sealed masked vector of `weight * delta` (flat float32 delta), followed by
        the server's `checks` (uint32 words, `check_values`) in reserved slots, masked too."""
        if self.stage != "shared":
            raise ProtocolError(f"site {self.site!r}: no shared keys to mask with in round {self.server_round}")
        roster = self._roster()
        masks = [(masking.self_mask_key(self.seed, self.context, self.site), 1)]
        partners = []
        for other in self.partners():
            try:
                agreement = ss.agree(self.mask_private, roster.mask_keys[other])
            except ss.ShareError:  # a peer with an unusable mask key: left out, not the whole round
                continue
            partners.append(other)
            masks.append((masking.pair_mask_key(agreement, self.context, self.site, other),
                          masking.pair_sign(self.site, other)))
        partners = tuple(partners)
        if len(partners) + 1 < roster.threshold:
            raise ProtocolError(f"site {self.site!r}: {len(partners)} neighbours left, "
                                f"{roster.threshold - 1} needed to go on")
        checks = np.zeros(0, np.uint32) if checks is None else np.asarray(checks, np.uint32).reshape(-1)
        delta = np.concatenate([np.asarray(delta, np.float32).reshape(-1), np.zeros(checks.size, np.float32)])
        vector = masking.mask_update(delta, roster.weight(self.site), roster.quantizer, masks)
        vector[vector.size - checks.size:] += checks  # mod 2^32: the masks still cover them
        seal = masking.seal_chunks(vector, round_key)
        tag = masking.tag_message(round_key, MASKED, *upload_fields(self.context, self.site, vector.size, partners))
        self.stage = "masked"
        return MaskedUpload(vector, seal, partners, tag)

    def reveal(self, survivors: list[str], dropouts: list[str], round_key: bytes) -> tuple[dict[str, bytes], dict[str, bytes], bytes]:
        """Stage 4: (seed shares of survivors, mask-key shares of dropouts, seal). Refuses
        (ProtocolError) overlapping lists, being called a dropout, fewer surviving neighbours
        than the threshold, or a second request in the round."""
        if self.stage != "masked":
            raise ProtocolError(f"site {self.site!r}: unmask asked at stage {self.stage!r} in round {self.server_round}")
        roster = self._roster()
        survivors, dropouts = set(survivors), set(dropouts)
        if survivors & dropouts:
            raise ProtocolError("a site is listed both as survivor and as dropout")
        if self.site not in survivors:
            raise ProtocolError(f"site {self.site!r} is not listed as a survivor")
        if len(survivors & set(roster.holders(self.site))) < roster.threshold:
            raise ProtocolError("fewer surviving neighbours than the threshold: refusing to reveal shares")
        seeds = {o: self.seed_shares[o] for o in sorted(survivors) if o in self.seed_shares}
        keys = {o: self.key_shares[o] for o in sorted(dropouts) if o in self.key_shares}
        self.stage = "revealed"
        return seeds, keys, masking.tag_message(round_key, REVEAL, *reveal_fields(self.context, self.site, seeds, keys))

    def to_state(self) -> bytes:
        """The site's round state as bytes (secrets included: keep it inside the site)."""
        return json.dumps({
            "site": self.site, "run": self.run_name, "round": self.server_round, "stage": self.stage,
            **{k: _b64(getattr(self, k)) for k in ("mask_private", "mask_public", "enc_private",
                                                    "enc_public", "seed", "roster")},
            "seed_shares": {o: _b64(v) for o, v in self.seed_shares.items()},
            "key_shares": {o: _b64(v) for o, v in self.key_shares.items()},
        }).encode()

    @classmethod
    def from_state(cls, data: bytes) -> MaskedSite:
        """Restore `to_state()`."""
        obj = json.loads(bytes(data))
        return cls(obj["site"], obj["run"], int(obj["round"]),
                   *(_unb64(obj[k]) for k in ("mask_private", "mask_public", "enc_private", "enc_public",
                                              "seed", "roster")),
                   {o: _unb64(v) for o, v in obj["seed_shares"].items()},
                   {o: _unb64(v) for o, v in obj["key_shares"].items()}, obj["stage"])


def reveal_fields(context: bytes, site: str, seeds: dict[str, bytes], keys: dict[str, bytes]) -> tuple:
    items = [x for o in sorted(seeds) for x in (SEED_SHARE, o, seeds[o])]
    items += [x for o in sorted(keys) for x in (KEY_SHARE, o, keys[o])]
    return (context, site, *items)


# --- the server's side -------------------------------------------------------------------------


CHECK_SLOTS = 4  # reserved words after each site's update: a corrupted sum passes with odds 2^-128


def check_values() -> np.ndarray:
    """Fresh random uint32 words the server asks one site to add in its reserved slots."""
    return np.frombuffer(os.urandom(4 * CHECK_SLOTS), np.uint32).copy()


def checks_hold(total: np.ndarray, checks: list[np.ndarray]) -> bool:
    """Whether the unmasked sum's reserved slots (its last words) hold exactly the sum of the
    summed sites' check values mod 2^32: else a vector or a mask removal was wrong."""
    expected = np.zeros(CHECK_SLOTS, np.uint32)
    for c in checks:
        expected += c
    return bool(np.array_equal(np.asarray(total).view(np.uint32)[-CHECK_SLOTS:], expected))


@dataclass(frozen=True)
class Unmasked:
    """The unmasked result: the weighted mean delta of the survivors (flat float32), the exact
    integer sum (int32 view of the uint32 sum) and the survivors' summed weight."""

    mean: np.ndarray
    total: np.ndarray
    weight_sum: float


def unmask(roster: Roster, masked: dict[str, np.ndarray], partners: dict[str, tuple[str, ...]],
           seed_shares: dict[str, list[bytes]], key_shares: dict[str, list[bytes]],
           commitments: dict[str, bytes], dropouts: list[str]) -> Unmasked:
    """The survivors' weighted mean from their masked vectors.

    `masked`: survivor -> its checked masked vector; `partners`: survivor -> the sites it masked
    pairwise with (its sealed list); `seed_shares` / `key_shares`: owner -> shares revealed by
    survivors; `commitments`: site -> seed commitment; `dropouts`: sites that shared keys but
    whose vector is not in the sum. ProtocolError when a secret cannot be rebuilt (too few
    shares) or a rebuilt secret fails its commitment / public key check.
    """
    survivors = sorted(masked, key=masking.order_key)
    if not survivors:
        raise ProtocolError("no masked vector to unmask")
    size = next(iter(masked.values())).size
    total = masking.sum_vectors((masked[s] for s in survivors), size)
    context = roster.context
    removals: list[tuple[bytes, int]] = []
    for s in survivors:
        seed = _rebuild(seed_shares.get(s, []), roster.threshold, f"the self-mask seed of site {s!r}")
        if commitments.get(s) != commitment(context, s, seed):
            raise ProtocolError(f"the rebuilt self-mask seed of site {s!r} does not match its commitment: "
                                "it dealt inconsistent shares", culprit=s)
        removals.append((masking.self_mask_key(seed, context, s), -1))
    dropped = set(dropouts)
    for d in sorted(dropped, key=masking.order_key):
        users = [s for s in survivors if d in partners.get(s, ())]
        if not users:
            continue
        key = _rebuild(key_shares.get(d, []), roster.threshold, f"the mask key of site {d!r}")
        if ss.public_of(key) != roster.mask_keys[d]:
            raise ProtocolError(f"the rebuilt mask key of site {d!r} does not match its public key: "
                                "it dealt inconsistent shares", culprit=d)
        for s in users:
            agreement = ss.agree(key, roster.mask_keys[s])
            removals.append((masking.pair_mask_key(agreement, context, s, d), -masking.pair_sign(s, d)))
    if (odd := one_sided_pairs(partners, survivors)) or any(
            p not in masked and p not in dropped for s in survivors for p in partners.get(s, ())):
        raise ProtocolError(f"pairwise masks that do not cancel (one-sided pairs {odd}, or a partner that is "
                            "neither survivor nor dropout): demote one site of each pair to a dropout first")
    masking.apply_masks(total, removals)
    weight_sum = sum(roster.weight(s) for s in survivors)
    return Unmasked(roster.quantizer.dequantize(total, weight_sum), total.view(np.int32), weight_sum)


def one_sided_pairs(partners: dict[str, tuple[str, ...]], survivors) -> list[tuple[str, str]]:
    """Survivor pairs (a, b) where a masked with b but b not with a (a share lost on the way):
    their pairwise mask would not cancel. The server demotes b to a dropout (its key is then
    rebuilt and a's mask removed)."""
    alive = set(survivors)
    return [(a, b) for a in sorted(alive, key=masking.order_key) for b in partners.get(a, ())
            if b in alive and a not in partners.get(b, ())]


def _rebuild(shares: list[bytes], threshold: int, what: str) -> bytes:
    try:
        return ss.combine_shares(shares, threshold)
    except ss.ShareError as exc:
        raise ProtocolError(f"cannot rebuild {what}: {exc}") from None
