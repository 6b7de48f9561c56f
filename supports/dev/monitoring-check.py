#!/usr/bin/env python3
"""Proves the dashboards and alert rules against a real Prometheus scraping the running apps.

Run by `supports/dev/stack test` (which starts the apps, Prometheus and this): drives a short
storefront scenario through the API, then asserts that
- every panel query of every dashboard returns data, its variables expanded as Grafana would;
- every metric family an app exports is on a panel, or listed in grafana/unpaneled.txt with why;
- every range is $__rate_interval or $__range, every panel has one unit;
- every alert rule loaded and evaluates without error.
Exits non-zero naming each failure.
"""
import argparse
import json
import pathlib
import random
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]


def call(method, url, body=None, token=None, expect=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            status, text = res.status, res.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    if expect is not None and status not in expect:
        raise SystemExit(f"{method} {url}: HTTP {status}: {text[:300]}")
    return status, (json.loads(text) if text.strip().startswith(("{", "[")) else text)


def storefront(api, collector, seconds):
    """Sign-ups, browsing, likes, wishlist alerts, coupons, point and card orders, cancellations,
    rankings."""
    _, tok = call("POST", f"{api}/api/v1/auth/token", {"login_id": "admin", "password": "admin-dev-password"}, expect={200})
    admin = tok["access_token"]
    _, brand = call("POST", f"{api}/api/v1/admin/brands", {"name": "Checked"}, admin, {201})
    products = [call("POST", f"{api}/api/v1/admin/products",
                     {"brand_id": brand["id"], "name": f"Item {i}", "price": 1000 * (i + 1), "stock": 100000}, admin, {201})[1]["id"]
                for i in range(3)]
    _, coupon = call("POST", f"{api}/api/v1/admin/coupons",
                     {"name": "500 off", "discount_type": "FIXED", "discount_value": 500, "total_quantity": 3}, admin, {201})
    users = []
    for i in range(4):
        login = f"shopper{i}{int(time.time())}"
        call("POST", f"{api}/api/v1/users", {"login_id": login, "password": f"{login}-password", "name": "S", "email": f"{login}@example.com"}, expect={201})
        _, t = call("POST", f"{api}/api/v1/auth/token", {"login_id": login, "password": f"{login}-password"}, expect={200})
        # A session refreshed once (rotation), as a storefront keeps its customer signed in.
        _, t = call("POST", f"{api}/api/v1/auth/refresh", {"refresh_token": t["refresh_token"]}, expect={200})
        users.append(t["access_token"])
        _, me = call("GET", f"{api}/api/v1/users/me", token=t["access_token"], expect={200})
        call("POST", f"{api}/api/v1/admin/users/{me['id']}/points", {"amount": 10_000_000, "reason": "monitoring check"}, admin, {200})
    # A session ended by its user.
    _, gone = call("POST", f"{api}/api/v1/auth/token", {"login_id": login, "password": f"{login}-password"}, expect={200})
    call("POST", f"{api}/api/v1/auth/logout", token=gone["access_token"], expect={204})
    # Customers waiting for a sold-out product are told by email when it is back (wishlist
    # alerts, through the development SMTP server).
    _, waited = call("POST", f"{api}/api/v1/admin/products",
                     {"brand_id": brand["id"], "name": "Sold out", "price": 1000, "stock": 0}, admin, {201})
    for token in users:
        call("PUT", f"{api}/api/v1/users/me/wishlist/{waited['id']}", token=token, expect={201})
    call("PATCH", f"{api}/api/v1/admin/products/{waited['id']}", {"stock": 2}, admin, {200})
    # A partner selling one product: its orders are shipped and confirmed (partner sales).
    stamp = int(time.time())
    seller = f"seller{stamp}"
    number = f"{random.randint(100, 999)}-{random.randint(10, 99)}-{random.randint(10000, 99999)}"
    call("POST", f"{api}/api/v1/admin/partners",
         {"name": "Checked partner", "business_number": number,
          "account": {"login_id": seller, "password": f"{seller}-password", "name": "P", "email": f"{seller}@example.com"}},
         admin, {201})
    _, t = call("POST", f"{api}/api/v1/auth/token", {"login_id": seller, "password": f"{seller}-password"}, expect={200})
    partner = t["access_token"]
    _, partner_brand = call("POST", f"{api}/api/v1/partner/brands", {"name": "Checked partner brand"}, partner, {201})
    _, partner_product = call("POST", f"{api}/api/v1/partner/products",
                              {"brand_id": partner_brand["id"], "name": "Partner item", "price": 2000, "stock": 100000},
                              partner, {201})
    deadline = time.time() + seconds
    n = 0
    while time.time() < deadline:
        token = users[n % len(users)]
        product = products[n % len(products)]
        call("GET", f"{api}/api/v1/products?page=0&size=20", expect={200})
        call("GET", f"{api}/api/v1/products/{product}", expect={200})
        call("POST", f"{api}/api/v1/products/{product}/likes", token=token, expect={200, 201, 204})
        call("POST", f"{api}/api/v1/coupons/{coupon['id']}/issue", token=token, expect={200, 201, 409})
        call("POST", f"{api}/api/v1/orders", {"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}}, token, {201})
        status, order = call("POST", f"{api}/api/v1/orders",
                             {"items": [{"product_id": product, "quantity": 1}],
                              "payment": {"method": "CARD", "card_type": "SAMSUNG", "card_no": "1234-5678-9814-1451"}}, token, {201})
        if n % 3 == 0:
            # A paid order cancelled is refunded (its card payment settles first).
            for _ in range(50):
                _, o = call("GET", f"{api}/api/v1/orders/{order['order_id']}", token=token, expect={200})
                if o["status"] != "PENDING_PAYMENT":
                    break
                time.sleep(0.1)
            call("POST", f"{api}/api/v1/orders/{order['order_id']}/cancel", token=token, expect={200, 409})
        call("POST", f"{api}/api/v1/orders", {"items": [{"product_id": product, "quantity": 10**9}], "payment": {"method": "POINT"}}, token, {409, 400})
        if n % 3 == 1:
            # A partner order shipped by its partner and confirmed by its customer.
            _, sold = call("POST", f"{api}/api/v1/orders",
                           {"items": [{"product_id": partner_product["id"], "quantity": 1}], "payment": {"method": "POINT"}},
                           token, {201})
            part = sold["partner_orders"][0]["partner_order_id"]
            call("POST", f"{api}/api/v1/partner/orders/{part}/ship", {"carrier": "CJ", "tracking_number": f"MC-{n}"}, partner, {200})
            call("POST", f"{api}/api/v1/orders/{sold['order_id']}/partner-orders/{part}/confirm", {}, token, {200})
        call("GET", f"{api}/no-such-route", expect={404})
        call("GET", f"{collector}/api/v1/rankings?size=10", expect={200})
        call("GET", f"{collector}/api/v1/rankings/products/{product}", expect={200})
        n += 1
    return n


def expand(expr):
    return (expr.replace("$__rate_interval", "30s").replace("$__range", "5m")
            .replace('"$job"', '".+"').replace('"$instance"', '".+"'))


def query(prom, expr):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    _, body = call("GET", url)
    if not isinstance(body, dict) or body.get("status") != "success":
        return None, f"error: {body}"
    return body["data"]["result"], None


def families(base):
    _, text = call("GET", f"{base}/metrics", expect={200})
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--api", required=True)
    ap.add_argument("--collector", required=True)
    ap.add_argument("--simulator", required=True)
    ap.add_argument("--seconds", type=int, default=25)
    args = ap.parse_args()
    failures = []

    dashboards = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
    targets = []
    for path in dashboards:
        doc = json.loads(path.read_text())
        names = {v["name"] for v in doc.get("templating", {}).get("list", [])}
        if not {"job", "instance"} <= names:
            failures.append(f"{path.name}: no job and instance variables")
        for panel in doc["panels"]:
            where = f"{path.name}: {panel['title']!r}"
            if panel.get("datasource", {}).get("type") == "prometheus":
                if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
                    failures.append(f"{where}: no unit")
                if panel.get("fieldConfig", {}).get("overrides"):
                    failures.append(f"{where}: per-series overrides (one unit per panel)")
            for target in panel.get("targets", []):
                if "expr" in target:
                    for window in re.findall(r"\[([^\]]+)\]", target["expr"]):
                        if window not in ("$__rate_interval", "$__range"):
                            failures.append(f"{where}: fixed window [{window}]")
                    targets.append((where, target["expr"]))
                elif "url" in target:
                    targets.append((where, "url:" + target["url"]))

    print(f"storefront scenario for {args.seconds} s ...", flush=True)
    rounds = storefront(args.api, args.collector, args.seconds)
    print(f"  {rounds} rounds", flush=True)

    # Positive signal first: every app scraped and up.
    deadline = time.time() + 60
    while True:
        result, _ = query(args.prometheus, "sum by (job) (up)")
        up = {r["metric"]["job"]: float(r["value"][1]) for r in result or []}
        if all(up.get(j) == 1 for j in ("commerce-api", "commerce-collector", "pg-simulator")):
            break
        if time.time() > deadline:
            raise SystemExit(f"Prometheus never saw every app up: {up}")
        time.sleep(1)

    pending = list(targets)
    deadline = time.time() + 90
    while pending:
        still = []
        for where, expr in pending:
            if expr.startswith("url:"):
                status, body = call("GET", args.collector + expr[4:])
                ok = status == 200 and isinstance(body, dict) and body.get("content")
                if not ok:
                    still.append((where, expr, f"HTTP {status}, no rows"))
                continue
            result, error = query(args.prometheus, expand(expr))
            if error or not result:
                still.append((where, expr, error or "no data"))
        if not still or time.time() > deadline:
            for where, expr, why in still:
                failures.append(f"{where}: {why}: {expr}")
            break
        pending = [(w, e) for w, e, _ in still]
        time.sleep(2)
    print(f"  {len(targets)} panel queries checked", flush=True)

    used = set()
    for _, expr in targets:
        for token in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
            used.add(re.sub(r"_(bucket|sum|count)$", "", token))
            used.add(token)
    listed = {}
    for line in (ROOT / "grafana" / "unpaneled.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, why = line.partition(" ")
            listed[name] = why.strip()
    exported = set()
    for base in (args.api, args.collector, args.simulator):
        exported |= families(base)
    for name in sorted(exported):
        if name in used and name in listed:
            failures.append(f"grafana/unpaneled.txt lists {name}, which is on a panel")
        elif name not in used and name not in listed:
            failures.append(f"{name} is exported but on no panel and not in grafana/unpaneled.txt")
        elif name in listed and not listed[name]:
            failures.append(f"grafana/unpaneled.txt: {name} needs a reason")
    print(f"  {len(exported)} exported metric families accounted for", flush=True)

    deadline = time.time() + 30
    while True:
        _, rules = call("GET", f"{args.prometheus}/api/v1/rules", expect={200})
        loaded = [r for g in rules["data"]["groups"] for r in g["rules"]]
        if all(r.get("health") != "unknown" for r in loaded) or time.time() > deadline:
            break
        time.sleep(1)
    expected = len(re.findall(r"^\s+- alert:", (ROOT / "docker" / "prometheus" / "alerts.yml").read_text(), re.M))
    if len(loaded) != expected:
        failures.append(f"{len(loaded)} alert rules loaded, alerts.yml has {expected}")
    for r in loaded:
        if r.get("health") != "ok":
            failures.append(f"alert {r['name']}: {r.get('health')} {r.get('lastError', '')}")
    print(f"  {len(loaded)} alert rules evaluating", flush=True)

    if failures:
        print("monitoring check FAILED:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        sys.exit(1)
    print("monitoring check passed")


if __name__ == "__main__":
    main()
