"""Verdicts, redaction and policy rules, on the pure domain (no database, no server)."""

from __future__ import annotations

import pytest
from tollgate_dlp.detectors import DETECTORS
from tollgate_dlp.domain import DEFAULT_RULES, Action, PolicySet, Verdict, inspect, validate_rules
from tollgate_dlp.errors import InvalidRule, UnknownDetector

CARD_A = "4111111111111111"
CARD_B = "5555555555554444"
SECRET = "AKIA" + "IOSFODNN7EXAMPLE"
EMAIL = "alice@example.com"


def policy(**rules: Action) -> PolicySet:
    return PolicySet.default("acc_1").revised(rules)


class TestDefaultPolicy:
    def test_an_account_without_a_policy_gets_version_0_redacting_cards_and_secrets_allowing_email(self) -> None:
        default = PolicySet.default("acc_1")
        assert default.version == 0
        effective = default.effective()
        assert (effective["email"], effective["payment_card"], effective["secret"]) == ("allow", "redact", "redact")
        assert dict(DEFAULT_RULES) == effective

    def test_a_clean_prompt_is_allowed_untouched(self) -> None:
        result = inspect(["What is the capital of France?"], PolicySet.default("acc_1"))
        assert result.verdict is Verdict.ALLOW
        assert result.findings == () and result.redacted_texts == ()

    def test_an_allowed_email_is_reported_but_not_rewritten(self) -> None:
        result = inspect([f"write to {EMAIL}"], PolicySet.default("acc_1"))
        assert result.verdict is Verdict.ALLOW
        assert [(f.type, f.action) for f in result.findings] == [("email", Action.ALLOW)]
        assert result.redacted_texts == ()


class TestRedaction:
    def test_cards_and_secrets_become_typed_placeholders_emails_stay(self) -> None:
        texts = [f"card {CARD_A} for {EMAIL}", f"key={SECRET}"]
        result = inspect(texts, PolicySet.default("acc_1"))
        assert result.verdict is Verdict.REDACT
        assert result.redacted_texts == (f"card [PAYMENT_CARD_1] for {EMAIL}", "key=[SECRET_1]")

    def test_the_same_value_keeps_its_number_across_texts_and_groupings(self) -> None:
        texts = [f"{CARD_A} then {CARD_B}", "again 4111 1111 1111 1111", f"and {CARD_B}"]
        result = inspect(texts, PolicySet.default("acc_1"))
        assert result.redacted_texts == (
            "[PAYMENT_CARD_1] then [PAYMENT_CARD_2]",
            "again [PAYMENT_CARD_1]",
            "and [PAYMENT_CARD_2]",
        )

    def test_each_type_counts_from_one_and_emails_match_ignoring_case(self) -> None:
        texts = [f"{EMAIL} {CARD_A} {SECRET} ALICE@EXAMPLE.COM bob@example.com"]
        result = inspect(texts, policy(email=Action.REDACT))
        assert result.redacted_texts == ("[EMAIL_1] [PAYMENT_CARD_1] [SECRET_1] [EMAIL_1] [EMAIL_2]",)

    def test_redacted_texts_match_the_request_length_even_for_clean_parts(self) -> None:
        texts = ["system: be brief", f"user: {CARD_A}", ""]
        result = inspect(texts, PolicySet.default("acc_1"))
        assert result.redacted_texts == ("system: be brief", "user: [PAYMENT_CARD_1]", "")

    def test_findings_carry_offsets_version_and_action_but_no_text(self) -> None:
        texts = ["hi", f"my card: {CARD_A}."]
        (finding,) = inspect(texts, PolicySet.default("acc_1")).findings
        assert (finding.type, finding.text_index, finding.start, finding.end) == ("payment_card", 1, 9, 25)
        assert texts[1][finding.start : finding.end] == CARD_A
        assert finding.detector_version == DETECTORS["payment_card"].version and finding.action is Action.REDACT
        assert CARD_A not in repr(finding)


class TestVerdictPrecedence:
    def test_block_beats_redact_and_nothing_is_rewritten(self) -> None:
        result = inspect([f"{CARD_A} {SECRET} {EMAIL}"], policy(secret=Action.BLOCK))
        assert result.verdict is Verdict.BLOCK
        assert result.redacted_texts == ()
        assert {(f.type, f.action) for f in result.findings} == {
            ("payment_card", Action.REDACT),
            ("secret", Action.BLOCK),
            ("email", Action.ALLOW),
        }

    def test_redact_beats_allow(self) -> None:
        result = inspect([EMAIL, CARD_A], PolicySet.default("acc_1"))
        assert result.verdict is Verdict.REDACT

    def test_everything_allowed_means_allow_with_findings_still_reported(self) -> None:
        everything_allowed = policy(payment_card=Action.ALLOW, secret=Action.ALLOW)
        result = inspect([f"{CARD_A} {SECRET}"], everything_allowed)
        assert result.verdict is Verdict.ALLOW
        assert [f.type for f in result.findings] == ["payment_card", "secret"]
        assert result.redacted_texts == ()

    def test_block_on_an_allowed_by_default_detector(self) -> None:
        result = inspect([f"contact {EMAIL}"], policy(email=Action.BLOCK))
        assert result.verdict is Verdict.BLOCK


class TestRules:
    def test_set_rules_override_detector_by_detector_and_unnamed_keep_their_default(self) -> None:
        revised = PolicySet.default("acc_1").revised(validate_rules([("email", Action.BLOCK)]))
        assert revised.version == 1
        assert revised.effective() == {**DEFAULT_RULES, "email": "block"}
        assert revised.revised({}).version == 2

    def test_unknown_detector(self) -> None:
        with pytest.raises(UnknownDetector, match="passport"):
            validate_rules([("passport", Action.BLOCK)])

    def test_missing_action(self) -> None:
        with pytest.raises(InvalidRule, match="no action"):
            validate_rules([("email", None)])

    def test_a_detector_named_twice(self) -> None:
        with pytest.raises(InvalidRule, match="more than one"):
            validate_rules([("email", Action.ALLOW), ("email", Action.BLOCK)])


class TestResolution:
    def test_a_version_resolves_each_team_and_key_once_and_keeps_answering_the_same(self) -> None:
        document = policy(email=Action.BLOCK)
        first = document.resolve("team-a", "key-1")
        assert document.resolve("team-a", "key-1") is first  # memoised: Inspect asks for it on every request
        assert document.resolve("team-b", "key-1") is not first
        assert first.actions["email"] is Action.BLOCK and first.sources["email"] == "account"

    def test_the_memo_is_bounded(self) -> None:
        document = policy()
        for i in range(5000):
            document.resolve("", f"key-{i}")
        assert 0 < len(document._resolved) <= 4096

    def test_the_memo_is_not_part_of_the_document(self) -> None:
        document = policy(email=Action.BLOCK)
        document.resolve("t", "k")
        assert document == policy(email=Action.BLOCK)
