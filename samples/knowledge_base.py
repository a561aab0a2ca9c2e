"""Make a synthetic knowledge base as Parquet shards: docs, tickets and wiki pages.

Lengths are long-tailed like real knowledge bases: many one- or two-sentence
passages, fewer long ones, and a tail past the model's 256-token limit. Like
real tickets, a third of the sentences are pasted logs, tracebacks and
configuration, which hold many more tokens per character than prose.

    python -m samples.knowledge_base --output sample-kb --rows 2000 --shards 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PRODUCTS = [
    "the billing service",
    "the mobile app",
    "single sign-on",
    "the data warehouse",
    "the search index",
    "the payments API",
    "the deploy pipeline",
    "the admin console",
    "webhooks",
    "the VPN gateway",
]
ACTIONS = [
    "fails to start",
    "returns a 502 error",
    "times out after 30 seconds",
    "logs users out",
    "drops messages under load",
    "shows stale data",
    "rejects valid tokens",
    "uses too much memory",
]
CAUSES = [
    "an expired TLS certificate",
    "a misconfigured load balancer",
    "a schema migration that did not finish",
    "a rate limit on the upstream provider",
    "a race condition in the cache layer",
    "a full disk on the worker",
]
STEPS = [
    "Restart the affected pods with kubectl rollout restart.",
    "Rotate the credentials in the secrets manager.",
    "Clear the CDN cache for the affected paths.",
    "Re-run the failed migration with the --resume flag.",
    "Raise the connection pool size to 50 and redeploy.",
    "Check the dashboard for error spikes after the fix.",
    "Open a ticket with the platform team if the alert fires again.",
    "Roll back to the previous release tag.",
]
FACTS = [
    "Backups run every night at 02:00 UTC and are kept for 30 days.",
    "Access requests are approved by the team lead within one business day.",
    "The on-call rotation changes every Monday at 09:00 local time.",
    "Production changes need two approvals and a green CI run.",
    "Customer data never leaves the EU region.",
    "Logs are retained for 90 days, metrics for 13 months.",
    "Feature flags are managed in the admin console under Settings.",
    "API keys expire after 180 days and must be rotated by their owners.",
]
KINDS = ["doc", "ticket", "wiki"]
SERVICES = ["billing-api", "auth-gateway", "search-indexer", "payments-worker", "admin-web", "etl-nightly"]
EXCEPTIONS = ["ConnectionResetError", "TimeoutError", "KeyError", "PermissionError", "SSLCertVerificationError"]


def _log_line(rng: np.random.Generator) -> str:
    """Tickets paste logs, ids and URLs: many tokens per character, unlike prose."""
    service, error = rng.choice(SERVICES), rng.choice(EXCEPTIONS)
    request = "".join(rng.choice(list("0123456789abcdef"), 12))
    pick = rng.integers(3)
    if pick == 0:
        return (
            f"Log: 2026-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}T{rng.integers(24):02d}:"
            f"{rng.integers(60):02d}:{rng.integers(60):02d}Z ERROR {service} req={request} {error}: "
            f"upstream returned {rng.choice([500, 502, 503, 504])} after {rng.integers(100, 30000)}ms"
        )
    if pick == 1:
        return (
            f'Traceback: File "/srv/{service}/app/handlers.py", line {rng.integers(10, 900)}, in handle; '
            f"{error}: [Errno {rng.integers(1, 120)}] see https://status.example.com/incidents/{request}"
        )
    return f"Config: {service}.yaml sets pool_size={rng.integers(5, 200)} timeout_ms={rng.integers(100, 60000)}"


def _sentence(rng: np.random.Generator) -> str:
    pick = rng.integers(6)
    if pick >= 4:
        return _log_line(rng)
    if pick == 0:
        return f"Users report that {rng.choice(PRODUCTS)} {rng.choice(ACTIONS)}."
    if pick == 1:
        return f"The root cause was {rng.choice(CAUSES)}."
    if pick == 2:
        return str(rng.choice(STEPS))
    return str(rng.choice(FACTS))


def make_rows(rows: int, seed: int = 0, start_id: int = 0) -> pa.Table:
    """`rows` passages; sentence counts are log-normal (median 2, tail past 40)."""
    rng = np.random.default_rng(seed)
    counts = np.clip(rng.lognormal(mean=0.8, sigma=0.9, size=rows).astype(int) + 1, 1, 60)
    texts = [" ".join(_sentence(rng) for _ in range(n)) for n in counts]
    kinds = rng.choice(KINDS, size=rows)
    titles = [f"{kind.title()}: {rng.choice(PRODUCTS)}" for kind in kinds]
    ids = [f"kb-{i:07d}" for i in range(start_id, start_id + rows)]
    return pa.table({"id": ids, "kind": kinds.tolist(), "title": titles, "text": texts})


def write_shards(output: Path, rows: int, shards: int, seed: int = 0) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, part in enumerate(np.array_split(np.arange(rows), shards)):
        table = make_rows(len(part), seed=seed + shard, start_id=int(part[0]) if len(part) else 0)
        paths.append(output / f"part-{shard:05d}.parquet")
        pq.write_table(table, paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=Path, help="Directory for part-*.parquet.")
    parser.add_argument("--rows", type=int, default=2000, help="Passages in all (default: 2000).")
    parser.add_argument("--shards", type=int, default=4, help="Parquet files to spread them over (default: 4).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed; the same seed makes the same data.")
    args = parser.parse_args()
    paths = write_shards(args.output, args.rows, args.shards, args.seed)
    print(f"wrote {args.rows} passages in {len(paths)} shards to {args.output}")


if __name__ == "__main__":
    main()
