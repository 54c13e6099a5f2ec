"""Names used on the wire and in node/run config, defined once.

Server and client import these constants instead of spelling the strings; later
modes (seals, masked vectors, ciphertexts) add their record keys here.
"""

# Records inside a message's RecordDict
ARRAYS = "arrays"  # ArrayRecord: model parameters (global model down, trained model up)
METRICS = "metrics"  # MetricRecord: numbers a site reports
CONFIG = "config"  # ConfigRecord: instructions from the server

HE_CIPHERTEXTS = "he-ciphertexts"  # ConfigRecord (he mode): CHUNKS = a site's ciphertexts (train reply);
#   SEEDS = every summed site's seed records (decrypt request)
HE_SUM = "he-sum"  # ArrayRecord (he mode, decrypt request): C0 = the blinded sum's c0 parts
SEALS = "seals"  # ConfigRecord: TAGS = one seal tag per chunk of the payload (he, masked)
DECRYPTED = "decrypted"  # ArrayRecord (he mode, decrypt reply): COEFFICIENTS of the blinded sum

# Keys inside those records
NUM_EXAMPLES = "num-examples"  # METRICS: training examples used by the site (FedAvg weight)
TRAIN_LOSS = "train-loss"  # METRICS: mean training loss of the last local epoch
DP_EPSILON = "dp-epsilon"  # METRICS (and CONFIG of a budget refusal): the site's DP-SGD epsilon so far
DP_BUDGET_SPENT = "dp-budget-spent"  # CONFIG (reply): 1 when the site refuses because its DP budget is spent
SERVER_ROUND = "server-round"  # CONFIG: the round number (1-based)
RUN_NAME = "run-name"  # CONFIG: the run's name, bound into every watermark and seal context
SIGNATURE = "signature"  # CONFIG: the server's Ed25519 signature over the global model's digest
SECURE_MODE = "secure-mode"  # CONFIG: the run's secure mode (what payload the site builds)
SIM_KEYS_DIR = "sim-keys-dir"  # CONFIG: simulation only: where the run made its keys
CLIENT_ID = "client-id"  # CONFIG (reply) and node config: the site's id (its seal key's name)
REFUSED = "refused"  # CONFIG (reply): why the site refused the global model
SITE_FAILED = "site-failed"  # CONFIG (reply): 1 when it refused because its own data, evaluation or training failed
GLOBAL_RECOVERED = "global-recovered"  # METRICS: 1 if the site had to recover the global model
VERIFY_SECONDS = "verify-seconds"  # METRICS: seconds the site spent verifying (recovering) the global model
TRAIN_SECONDS = "train-seconds"  # METRICS: seconds of local training
SEAL_SECONDS = "seal-seconds"  # METRICS: seconds spent sealing the trained weights
EVAL_PREFIX = "eval-"  # METRICS: "eval-<metric>" = the task's metric of the received global model on the
#   site's validation data (federated evaluation; plaintext scalars, never the update)
EVAL_EXAMPLES = "eval-examples"  # METRICS: how many validation examples those metrics cover

CHUNKS = "chunks"  # list[bytes]
TAGS = "tags"  # list[bytes]
SEEDS = "seeds"  # list[bytes], one per site
C0 = "c0"  # uint64 array, one row of c0 coefficients per chunk
COEFFICIENTS = "coefficients"  # uint64 array, one row of plaintext coefficients per chunk
ENCRYPT_SECONDS = "encrypt-seconds"  # METRICS: seconds the site spent encrypting (or masking) its update

# Message types (Flower's "train" / "evaluate" / "query.<name>")
TRAIN = "train"
DECRYPT = "query.decrypt"  # he mode: one site decrypts the blinded sum

# Node config keys
PARTITION_ID = "partition-id"  # simulation: which partition this site holds
NUM_PARTITIONS = "num-partitions"  # simulation: number of sites
DATA_PATH = "data-path"  # deployment: the site's own CSV file
LABEL_COLUMN = "label-column"  # deployment: the CSV column holding the class label
KEYS_DIR = "keys-dir"  # deployment: the site's key folder (DIR/clients/<id> of `fedseal keys init`)

# masked mode (server/modes/masked.py <-> client/modes/masked.py; common/secure/secagg.py computes)
MASKED_QUERY = "query.masked"  # message type of the SecAgg+ stages around training
MASKED = "masked"  # ConfigRecord: the stage's fields (request and reply)
MASKED_VECTOR = "masked-vector"  # ArrayRecord (train reply): VECTOR = the site's masked uint32 vector
VECTOR = "vector"
MASKED_STAGE = "masked-stage"  # CONFIG: which stage a query.masked message asks for
STAGE_SETUP, STAGE_SHARE_KEYS, STAGE_UNMASK = "setup", "share-keys", "unmask"
MASKED_STATE = "state"  # context.state: a site's round state (its secrets never leave the site)
MASKED_TAG = "tag"  # MASKED (reply): the site's seal over the stage's fields
MASK_KEY, ENC_KEY = "mask-key", "enc-key"  # MASKED (setup reply): X25519 public keys
ROSTER, ROSTER_SIGNATURE = "roster", "roster-signature"  # CONFIG: the signed roster / unmask request
DESTINATIONS, CIPHERTEXTS = "destinations", "ciphertexts"  # share-keys reply; CIPHERTEXTS also in train CONFIG
SOURCES = "sources"  # train CONFIG: who each forwarded ciphertext comes from
COMMITMENT = "commitment"  # MASKED (share-keys reply): SHA-256 commitment to the self-mask seed
SEAL, PARTNERS = "seal", "partners"  # MASKED (train reply): chunk seals; pairwise partners
SURVIVORS, DROPOUTS = "survivors", "dropouts"  # CONFIG (unmask request)
SEED_OWNERS, SEED_SHARES = "seed-owners", "seed-shares"  # MASKED (unmask reply)
KEY_OWNERS, KEY_SHARES = "key-owners", "key-shares"
CHECK_VALUES = "check-values"  # train CONFIG: server-chosen check values the site adds after its update
#   (masked: uint32 words in reserved slots; he: float64 values encrypted after the update)
DIGEST_HOLDERS, SHARE_DIGESTS = "digest-holders", "share-digests"  # MASKED (share-keys reply): per holder,
#   the dealer's SHA-256 digests of the seed share and the key share it dealt (64 bytes)

# enrolment (server/enrolment.py <-> client/app.py; common/integrity/enrol.py computes)
ENROL = "query.enrol"  # message type: a site proves its id once per run
NONCE = "nonce"  # CONFIG (enrol request): the server's fresh nonce
ENROL_PROOF = "enrol-proof"  # CONFIG (enrol reply): the site's proof (with CLIENT_ID and NUM_EXAMPLES)
