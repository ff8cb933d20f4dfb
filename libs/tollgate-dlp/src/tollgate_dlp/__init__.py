"""Tollgate's DLP engine as a library, pure of any transport or storage, so that the policy service (which owns
the documents: storage, versions, shadow, CRUD) and ingress (which inspects on the request path) run the very same
code:

- :mod:`.document` — the policy document an account sets, parsed, validated and serialised;
- :mod:`.resolved` — that document applied to one request's team and key;
- :mod:`.detectors`, :mod:`.validators`, :mod:`.engine` — the detectors and the compiled scanners (Hyperscan
  when importable, else Python's ``re``); :mod:`.scanners` caches one scanner per set of custom detectors;
- :mod:`.inspection` — the verdict, findings, routing limits and redaction of one request's texts;
- :mod:`.decisions` — the PolicyDecided event a decision records (HMAC of matches, never the text);
- :mod:`.limits`, :mod:`.errors`, :mod:`.state` — input caps and fair share of scan threads, the one error
  hierarchy, an account's current policy (enforced + shadow).

``domain`` gathers document, resolved and inspection under one name.
"""
