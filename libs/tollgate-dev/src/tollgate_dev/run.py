"""``make run``: start the whole platform on the embedded defaults, seed a demo account, print how to call it.

DEVELOPMENT ONLY. Ctrl-C (or SIGTERM) stops every process gracefully. Environment it honours:
``KAFKA_BOOTSTRAP_SERVERS`` (use your Kafka instead of the embedded broker), ``BILLING_DATABASE_URL`` /
``METERING_DATABASE_URL`` / ``POLICY_DATABASE_URL`` (e.g. PostgreSQL), and real provider keys (``OPENAI_API_KEY``,
``DEEPSEEK_API_KEY``, …) which are handed to the router only.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path

from .platform import PROVIDER_KEY_VARS, Platform, PlatformConfig
from .seed import seed_demo

__all__ = ["main"]


def _admin_token(var_dir: Path) -> str:
    path = var_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    token = "tga-" + secrets.token_urlsafe(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def main() -> int:
    var_dir = Path(os.environ.get("TOLLGATE_VAR_DIR", "var")).resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    provider_env = {k: os.environ[k] for k in PROVIDER_KEY_VARS if os.environ.get(k)}
    databases = {
        svc: os.environ[f"{svc.upper()}_DATABASE_URL"]
        for svc in ("billing", "metering", "policy")
        if os.environ.get(f"{svc.upper()}_DATABASE_URL")
    }
    config = PlatformConfig(
        var_dir=var_dir,
        admin_token=_admin_token(var_dir),
        kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
        database_urls=databases,
        extra_env={"router": provider_env},
        echo=True,
    )
    platform = Platform(config)
    stop = False

    def _on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        platform.start()
    except Exception as exc:
        print(f"\n[supervisor] could not start Tollgate: {exc}", file=sys.stderr)
        return 1
    try:
        demo = seed_demo(platform)
        base = f"{platform.ingress_url}/v1"
        env_file = var_dir / "demo.env"
        env_file.write_text(
            f"OPENAI_BASE_URL={base}\nOPENAI_API_KEY={demo.api_key}\nTOLLGATE_ADMIN_TOKEN={config.admin_token}\n"
        )
        env_file.chmod(0o600)
        upstream = ", ".join(sorted(provider_env)) or "the mock upstream (no provider keys in the environment)"
        print(
            f"""
==================================================================================================
Tollgate is running. Ingress: {platform.ingress_url}   Upstream: {upstream}
Demo account {demo.account_id} has $10.00 of credit. Its key and the admin token are in {env_file}

  curl {base}/chat/completions -H "Authorization: Bearer {demo.api_key}" \\
       -H "Content-Type: application/json" \\
       -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  # Python, with the official openai SDK (pip install openai):
  from openai import OpenAI
  client = OpenAI(base_url="{base}", api_key="{demo.api_key}")
  reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "Hi"}}])
  print(reply.choices[0].message.content)
  print(reply.usage)

  curl {base}/key -H "Authorization: Bearer {demo.api_key}"     # balance and usage of the key

Ctrl-C stops everything.
==================================================================================================
""",
            flush=True,
        )
        while not stop:
            time.sleep(0.5)
        return 0
    finally:
        print("[supervisor] stopping…", flush=True)
        platform.stop()


if __name__ == "__main__":
    raise SystemExit(main())
