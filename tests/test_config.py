"""Configuration: the shipped file loads, and every problem is reported at once with file, key and hint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.app import CONFIG, ROOT, SECRETS
from webhook.config import Settings, database_url, secret_variable
from webhook.errors import ConfigError

DRY = SECRETS | {"GENESYS_DRY_RUN": "true"}


def load(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "webhook.toml"
    path.write_text(toml, encoding="utf-8")
    return Settings.from_env(DRY if env is None else env, config_path=str(path))


def problems(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, toml, env)
    return info.value.problems


def test_shipped_config_loads_with_its_sources_rules_and_defaults() -> None:
    settings = Settings.from_env(DRY, config_path=CONFIG)
    assert {n: s.scheme for n, s in settings.sources.items()} == {
        "zendesk": "zendesk", "helpdesk": "standard", "inhouse": "hmac-sha256", "hubspot": "hubspot-v3"}
    assert settings.sources["hubspot"].mapping.agent == ("ownerEmail", "ownerId")
    assert settings.rules[0].action == "mute" and settings.rules[-1].action == "none"
    assert settings.agents["zendesk:381920"] == "jane.agent@example.com"
    assert (settings.max_body_bytes, settings.max_event_age_seconds, settings.retry_budget_seconds) == (
        262144, 120.0, 30.0)
    assert settings.database_url == "sqlite:///instance/webhook.db"
    assert settings.genesys.dry_run is True


def test_secrets_are_split_on_commas_for_rotation_and_never_shown_in_repr() -> None:
    env = DRY | {"INHOUSE_WEBHOOK_SECRET": " old-secret , new-secret ,"}
    settings = Settings.from_env(env, config_path=CONFIG)
    assert settings.sources["inhouse"].secrets == ("old-secret", "new-secret")
    assert "new-secret" not in repr(settings)


def test_every_problem_is_listed_at_once_with_file_key_and_hint(tmp_path: Path) -> None:
    toml = """
[sources.zendesk]
scheme = "zendsk"
mapping = "zendesk-event"
[sources.crm]
scheme = "standard"
mapping = {ticket_id = "t", status = "s"}
tolerance = 30
[[rules]]
status = "hold"
[[rules]]
status = "open"
action = "silence"
[intake]
max_body_bytes = "big"
[procesing]
max_event_age_seconds = 60
"""
    env = {"GENESYS_DRY_RUN": "false", "GENESYS_REGION": "mars_north_1"}
    found = "\n".join(problems(tmp_path, toml, env))
    path = str(tmp_path / "webhook.toml")
    for expected in [
        f"{path}: sources.zendesk.scheme: unknown scheme 'zendsk'; use one of hmac-sha256, hubspot-v3, standard, "
        "zendesk",
        f"{path}: sources.crm.mapping: mapping lacks agent",
        f"{path}: sources.crm.tolerance: unknown key",
        f"{path}: rules[1]: action is None; it must be one of mute, unmute, none",
        f"{path}: rules[2]: action is 'silence'",
        f"{path}: intake.max_body_bytes: must be an integer, got 'big'",
        f"{path}: procesing: unknown section",
        "environment: ZENDESK_WEBHOOK_SECRET: unset or empty",
        "environment: CRM_WEBHOOK_SECRET: unset or empty",
        "environment: GENESYS_CLIENT_ID: unset",
        "environment: GENESYS_CLIENT_SECRET: unset",
        "environment: GENESYS_REGION: unknown Genesys region 'mars_north_1'",
    ]:
        assert expected in found
    assert len(found.splitlines()) == 12


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("", "sources: no source defined"),
        ("[sources.'Bad Name']\nscheme='standard'", "a source name is lower-case"),
        ("[sources.x]\nscheme='standard'\nheader='X-Sig'", "only the hmac-sha256 scheme takes a header"),
        ("[sources.x]\nscheme='hmac-sha256'\nheader='X Sig'", "must be an HTTP header name"),
        ("[sources.x]\nscheme='standard'\ntolerance_seconds=0", "tolerance_seconds: must be at least 1"),
        ("[sources.x]\nscheme='standard'\n[agents]\n'x:1' = 3", "agents.x:1: must be a Genesys user id"),
        ("[sources.x]\nscheme='standard'\nrules = 'mute'", "unknown key"),
        ("[sources.x]\nscheme='standard'\n[processing]\nworker_threads = 1.5", "must be an integer"),
        ("[sources.x\n", "not valid TOML"),
    ],
)
def test_single_problems_are_named(tmp_path: Path, toml: str, message: str) -> None:
    env = DRY | {"X_WEBHOOK_SECRET": "s"}
    assert any(message in p for p in problems(tmp_path, toml, env)), problems(tmp_path, toml, env)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[processing]\nmax_event_age_seconds = nan", "processing.max_event_age_seconds: must be a finite number"),
        ("[processing]\nretry_budget_seconds = inf", "processing.retry_budget_seconds: must be a finite number"),
        ("[retention]\nkeep_days = inf", "retention.keep_days: must be a finite number"),
        ("tolerance_seconds = nan", "sources.x.tolerance_seconds: must be a finite number"),
        ("[processing]\nstale_claim_seconds = 1" + "0" * 400,
         "processing.stale_claim_seconds: must be at most 86,400, got 10000000000000000..."),
        ("[processing]\nworker_threads = 100000", "processing.worker_threads: must be at most 64, got 100000"),
        ("[retention]\nkeep_days = 1e6", "retention.keep_days: must be at most 36,500, got 1000000.0"),
        ("[intake]\nmax_body_bytes = 1073741824", "intake.max_body_bytes: must be at most 16,777,216"),
        ("mapping = 5", "sources.x.mapping: mapping must be a preset name"),
        ("scheme = ['standard']", "sources.x.scheme: unknown scheme"),
        ("scheme = {a = 1}", "sources.x.scheme: unknown scheme"),
        ("x = " + "9" * 5000, "not valid TOML"),
        ("x = " + "[" * 5000 + "]" * 5000, "not valid TOML"),
    ],
)
def test_hostile_values_are_config_problems_never_other_errors(tmp_path: Path, toml: str, message: str) -> None:
    """Found by tests/test_fuzz.py: NaN/inf were accepted (a NaN tolerance made every request a 500); a mapping or
    scheme of the wrong type, a 5,000-digit integer and deep arrays raised TypeError, ValueError, RecursionError."""
    env = DRY | {"X_WEBHOOK_SECRET": "s"}
    found = problems(tmp_path, "[sources.x]\nscheme = 'standard'\n" + toml if "scheme =" not in toml
                     else "[sources.x]\n" + toml, env)
    assert any(message in p for p in found), found


def test_missing_file_says_how_to_point_at_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found; set WEBHOOK_CONFIG"):
        Settings.from_env(DRY, config_path=str(tmp_path / "absent.toml"))


def test_live_genesys_needs_credentials_and_a_region_or_both_urls() -> None:
    live = SECRETS | {"GENESYS_DRY_RUN": "false", "GENESYS_CLIENT_ID": "id", "GENESYS_CLIENT_SECRET": "secret"}
    with pytest.raises(ConfigError, match="GENESYS_REGION: unset"):
        Settings.from_env(live, config_path=CONFIG)
    region = Settings.from_env(live | {"GENESYS_REGION": "eu_west_1"}, config_path=CONFIG).genesys
    assert region.hosts() == ("https://api.mypurecloud.ie", "https://login.mypurecloud.ie")
    urls = live | {"GENESYS_API_URL": "http://127.0.0.1:9/", "GENESYS_LOGIN_URL": "http://127.0.0.1:9"}
    assert Settings.from_env(urls, config_path=CONFIG).genesys.hosts() == ("http://127.0.0.1:9",) * 2
    assert "secret" not in repr(region)


@pytest.mark.parametrize("word", ["maybe", "2"])
def test_dry_run_must_be_a_boolean_word(word: str) -> None:
    with pytest.raises(ConfigError, match="GENESYS_DRY_RUN"):
        Settings.from_env(SECRETS | {"GENESYS_DRY_RUN": word}, config_path=CONFIG)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
        ("postgresql://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_database_urls_accept_heroku_form(url: str, expected: str) -> None:
    assert database_url(url) == expected


def test_secret_variable_names() -> None:
    assert secret_variable("zendesk") == "ZENDESK_WEBHOOK_SECRET"
    assert secret_variable("help-desk_2") == "HELP_DESK_2_WEBHOOK_SECRET"


def test_the_service_refuses_to_start_and_lists_the_problems(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_WEBHOOK_SECRET") and not k.startswith("GENESYS")}
    env |= {"WEBHOOK_CONFIG": CONFIG, "PYTHONPATH": str(ROOT), "ZENDESK_WEBHOOK_SECRET": "only-one"}
    result = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "crm-mute-bridge cannot start" in result.stderr
    assert "HELPDESK_WEBHOOK_SECRET: unset or empty" in result.stderr
    assert "INHOUSE_WEBHOOK_SECRET" in result.stderr and "only-one" not in result.stderr


def test_a_stale_claim_shorter_than_one_events_budget_is_refused(tmp_path: Path) -> None:
    toml = Path(CONFIG).read_text().replace("stale_claim_seconds    = 60", "stale_claim_seconds    = 30")
    assert any("processing.stale_claim_seconds: must be more than retry_budget_seconds + 5 (35)" in p
               for p in problems(tmp_path, toml))


def test_the_genesys_request_spacing_is_configurable(tmp_path: Path) -> None:
    assert Settings.from_env(DRY, config_path=CONFIG).genesys.requests_per_minute == 300
    base = "[sources.x]\nscheme='standard'\n"
    env = DRY | {"X_WEBHOOK_SECRET": "s"}
    assert load(tmp_path, base, env).genesys.requests_per_minute == 300
    assert load(tmp_path, base + "[genesys]\nrequests_per_minute = 0\n", env).genesys.requests_per_minute == 0
    assert load(tmp_path, base + "[genesys]\nrequests_per_minute = 600\n", env).genesys.requests_per_minute == 600


@pytest.mark.parametrize(("table", "message"), [
    ("requests_per_minute = 5", "genesys.requests_per_minute: must be 0 (no spacing) or at least 10, got 5"),
    ("requests_per_minute = -1", "genesys.requests_per_minute: must be at least 0"),
    ("requests_per_minute = 'fast'", "genesys.requests_per_minute: must be a number"),
    ("rpm = 300", "genesys.rpm: unknown key; [genesys] has requests_per_minute"),
])
def test_a_bad_genesys_request_spacing_is_named(tmp_path: Path, table: str, message: str) -> None:
    found = problems(tmp_path, f"[sources.x]\nscheme='standard'\n[genesys]\n{table}\n", DRY | {"X_WEBHOOK_SECRET": "s"})
    assert any(message in p for p in found), found


USER_CLIENT = {"GENESYS_USER_CLIENT_ID": "code-client", "GENESYS_USER_CLIENT_SECRET": "code-secret",
               "PUBLIC_URL": "https://bridge.example.com", "GENESYS_REGION": "mypurecloud.ie",
               "TOKEN_ENCRYPTION_KEY": "8Yx0ZQx0Xj1fTt0mI1bqQb7v1aD0Jd0y5m7JvS2cF4k="}


def test_the_user_client_configures_the_agent_and_service_user_identities() -> None:
    settings = Settings.from_env(DRY | USER_CLIENT, config_path=CONFIG)
    genesys = settings.genesys
    assert genesys.identities() == ("agent", "service_user")
    assert genesys.redirect_uri == "https://bridge.example.com/genesys/callback"
    assert genesys.connect_url == "https://bridge.example.com/genesys/connect"
    assert "code-secret" not in repr(settings) and USER_CLIENT["TOKEN_ENCRYPTION_KEY"] not in repr(settings)
    both = Settings.from_env(DRY | USER_CLIENT | {"GENESYS_CLIENT_ID": "cc", "GENESYS_CLIENT_SECRET": "s"},
                             config_path=CONFIG)
    assert both.genesys.identities() == ("agent", "service_user", "client_credentials")


@pytest.mark.parametrize(("env", "message"), [
    ({"GENESYS_USER_CLIENT_SECRET": ""}, "GENESYS_USER_CLIENT_SECRET: unset while the other half"),
    ({"PUBLIC_URL": ""}, "PUBLIC_URL: unset; set the service's public base URL"),
    ({"TOKEN_ENCRYPTION_KEY": ""}, "TOKEN_ENCRYPTION_KEY: unset; user tokens are kept encrypted"),
    ({"TOKEN_ENCRYPTION_KEY": "not-a-key"}, "TOKEN_ENCRYPTION_KEY: key 1 of 1 is not a Fernet key"),
    ({"PUBLIC_URL": "http://bridge.example.com"}, "PUBLIC_URL: 'http://bridge.example.com' is plain http"),
    ({"GENESYS_API_URL": "http://api.example.com"}, "GENESYS_API_URL: 'http://api.example.com' is plain http"),
    ({"GENESYS_LOGIN_URL": "ftp://login.example.com"}, "GENESYS_LOGIN_URL: 'ftp://login.example.com' is not an"),
    ({"PUBLIC_URL": "https://example.com/bridge"}, "PUBLIC_URL: 'https://example.com/bridge' has a path"),
])
def test_acting_as_a_user_needs_its_whole_setup(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(DRY | USER_CLIENT | env, config_path=CONFIG)
    assert [p for p in info.value.problems if message in p], info.value.problems


def test_http_is_accepted_for_a_loopback_host_only() -> None:
    settings = Settings.from_env(DRY | USER_CLIENT | {"PUBLIC_URL": "http://127.0.0.1:5000/",
                                                      "GENESYS_API_URL": "http://localhost:9000"}, config_path=CONFIG)
    assert (settings.genesys.public_url, settings.genesys.api_url) == ("http://127.0.0.1:5000", "http://localhost:9000")


@pytest.mark.parametrize(("table", "message"), [
    ('act_as = ["agent", "robot"]', "genesys.act_as: must be a non-empty list of distinct identities"),
    ('act_as = ["agent", "agent"]', "genesys.act_as: must be a non-empty list of distinct identities"),
    ("act_as = []", "genesys.act_as: must be a non-empty list"),
    ('act_as = ["client_credentials"]', "genesys.act_as: 'client_credentials' is listed but not configured"),
])
def test_a_bad_act_as_is_named(tmp_path: Path, table: str, message: str) -> None:
    toml = Path(CONFIG).read_text(encoding="utf-8").replace("[genesys]\n", f"[genesys]\n{table}\n", 1)
    env = SECRETS | USER_CLIENT | {"GENESYS_DRY_RUN": "false"}
    assert [p for p in problems(tmp_path, toml, env) if message in p]


def test_act_as_sets_the_order_of_the_identities(tmp_path: Path) -> None:
    toml = Path(CONFIG).read_text(encoding="utf-8").replace(
        "[genesys]\n", '[genesys]\nact_as = ["service_user", "agent"]\n', 1)
    settings = load(tmp_path, toml, SECRETS | USER_CLIENT | {"GENESYS_DRY_RUN": "false"})
    assert settings.genesys.identities() == ("service_user", "agent")


@pytest.mark.parametrize(("edit", "message"), [
    (("[genesys]\n", '[genesys]\nconfirm = "yes"\n'), "genesys.confirm: must be true or false, got 'yes'"),
    (("[processing]\n", "[processing]\nmax_mute_seconds = -1\n"), "processing.max_mute_seconds: must be at least 0"),
    (("[processing]\n", "[processing]\nmax_pause_seconds = 1e9\n"), "processing.max_pause_seconds: must be at most"),
])
def test_card_capture_knobs_are_checked(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    toml = Path(CONFIG).read_text(encoding="utf-8").replace(*edit, 1)
    assert [p for p in problems(tmp_path, toml) if message in p]


def test_card_capture_knobs_default_to_off(tmp_path: Path) -> None:
    settings = Settings.from_env(DRY, config_path=CONFIG)
    assert (settings.genesys.confirm, settings.max_mute_seconds, settings.max_pause_seconds) == (False, 0.0, 0.0)


def test_an_unsigned_time_source_without_occurred_at_is_warned_of(tmp_path: Path) -> None:
    """Issue 11, finding 3: a source whose scheme signs no timestamp and whose mapping reads no event time dates its
    events at receipt; that is allowed, but said at start-up."""
    env = DRY | {"X_WEBHOOK_SECRET": "s", "Y_WEBHOOK_SECRET": "s"}
    mapping = '{ticket_id = "t", status = "s", agent = "a"}'
    settings = load(tmp_path, f"[sources.x]\nscheme = 'hmac-sha256'\nmapping = {mapping}\n"
                              f"[sources.y]\nscheme = 'standard'\nmapping = {mapping}\n", env)
    assert settings.warnings == (
        "source x: scheme hmac-sha256 signs no timestamp and its mapping has no occurred_at, so its events are "
        "dated when they arrive: a captured delivery replayed after its dedupe key is forgotten ([retention] "
        "keep_keys_days) would be acted on as new; map the body's event time as occurred_at",)
    assert Settings.from_env(DRY, config_path=CONFIG).warnings == ()


@pytest.mark.parametrize(("retention", "problem"), [
    ("keep_keys_days = 30", "retention.keep_keys_days: must be at least 365, got 30"),
    ("keep_days = 500\nkeep_keys_days = 400", "retention.keep_keys_days: must be at least keep_days (500)"),
])
def test_dedupe_keys_are_kept_a_year_and_no_shorter_than_the_events(tmp_path: Path, retention: str,
                                                                    problem: str) -> None:
    toml = f"[sources.x]\nscheme='standard'\n[retention]\n{retention}\n"
    assert any(problem in p for p in problems(tmp_path, toml, DRY | {"X_WEBHOOK_SECRET": "s"}))
