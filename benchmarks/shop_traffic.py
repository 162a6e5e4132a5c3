"""The locust scenario of `benchmarks/reliability.py`: what a shop's front end sends to `vitrine serve`.

Run by the benchmark as its own process (locust patches the standard library with gevent), headless:

    VITRINE_LOAD_PLAN=plan.json locust -f benchmarks/shop_traffic.py --headless --host http://127.0.0.1:8000 \
        --users 20 --spawn-rate 20 --run-time 30s --csv out/step

The plan (written by the benchmark from the served shop) names known users, users the shop knows
without history (cold start), items and search words. Each simulated shopper sends about
`VITRINE_LOAD_RATE_PER_USER` requests per second (locust's `constant_throughput`), so the offered
rate is shoppers x that. Any non-2xx answer is a failure; a 2xx answer that is `degraded` is counted
as a failure too, so a load that only holds by degrading does not pass.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid

from locust import FastHttpUser, constant_throughput, task

with open(os.environ["VITRINE_LOAD_PLAN"], encoding="utf-8") as handle:
    PLAN = json.load(handle)
RATE_PER_USER = float(os.environ.get("VITRINE_LOAD_RATE_PER_USER", "5"))
# One shopper in this many is anonymous: an id the shop has never seen.
UNKNOWN_SHARE = 10


class Shopper(FastHttpUser):
    wait_time = constant_throughput(RATE_PER_USER)

    def on_start(self) -> None:
        self.rng = random.Random(uuid.uuid4().int)
        # Shoppers spawned together would send in lockstep, in bursts of one request each; a random start
        # within one period spreads them out, as independent shoppers are.
        time.sleep(self.rng.random() / RATE_PER_USER)
        self.user_id = self.rng.choice(PLAN["known_users"]) if self.rng.randrange(UNKNOWN_SHARE) else f"anon-{uuid.uuid4().hex[:12]}"

    def _recommend(self, user_id: str, name: str) -> None:
        with self.client.get(f"/recommend/{user_id}?k=20", name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
            elif response.json().get("degraded"):
                response.failure(f"degraded: {response.json().get('reason')}")

    @task(6)
    def recommend(self) -> None:
        self._recommend(self.user_id, "/recommend/[user]")

    @task(1)
    def recommend_cold_start(self) -> None:
        cold = PLAN["cold_users"] or [f"anon-{uuid.uuid4().hex[:12]}"]
        self._recommend(self.rng.choice(cold), "/recommend/[cold]")

    @task(2)
    def search(self) -> None:
        query = " ".join(self.rng.sample(PLAN["words"], k=min(2, len(PLAN["words"]))))
        self.client.get("/search", params={"q": query, "k": 20}, name="/search")

    @task(2)
    def similar(self) -> None:
        self.client.get(f"/similar/{self.rng.choice(PLAN['items'])}?k=20", name="/similar/[item]")

    @task(2)
    def post_event(self) -> None:
        event = {"user_id": self.user_id, "item_id": self.rng.choice(PLAN["items"]),
                 "event_type": self.rng.choice(["view", "view", "view", "click", "add_to_cart", "purchase"])}  # fmt: skip
        with self.client.post("/events", json=event, name="/events", catch_response=True) as response:
            if response.status_code != 202:
                response.failure(f"status {response.status_code}")
