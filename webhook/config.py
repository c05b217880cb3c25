"""Settings: secrets and deployment from the environment, behaviour from config/webhook.toml; all problems at once."""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from webhook.crypto import parse_keys
from webhook.errors import ConfigError
from webhook.events import FieldMap, field_map
from webhook.genesys.model import IDENTITY_KINDS, IdentityKind
from webhook.genesys.ratelimit import DEFAULT_REQUESTS_PER_MINUTE, MIN_REQUESTS_PER_MINUTE
from webhook.regions import region_hosts
from webhook.rules import Rule, rule_from_table
from webhook.signatures import DEFAULT_HMAC_HEADER, SCHEMES, TIMESTAMPED_SCHEMES

DEFAULT_CONFIG = "config/webhook.toml"
DEFAULT_DATABASE_URL = "sqlite:///instance/webhook.db"
DAY = 86400.0
DEFAULT_TOLERANCE = 300.0  # seconds of clock skew allowed between a sender and this service, both ways
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}
TOP_KEYS = ("sources", "rules", "agents", "intake", "processing", "genesys", "retention", "console")
SOURCE_KEYS = ("scheme", "mapping", "tolerance_seconds", "header")
CLAIM_MARGIN_SECONDS = 5.0  # the store writes around the Genesys calls, which the deadline bounds
CONNECT_PATH = "/genesys/connect"
CALLBACK_PATH = "/genesys/callback"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
SOURCE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
CONSOLE_KEYS = ("operators", "idle_minutes")
MIN_SECRET_KEY_CHARS = 32


@dataclass(frozen=True)
class Source:
    """A sender: how its requests are signed and how its bodies map to events."""

    name: str
    scheme: str
    mapping: FieldMap
    secrets: tuple[str, ...] = field(repr=False)
    tolerance_seconds: float = DEFAULT_TOLERANCE
    header: str = DEFAULT_HMAC_HEADER


@dataclass(frozen=True)
class Genesys:
    """How to reach Genesys Cloud; dry_run means decide and record, never call."""

    dry_run: bool = True
    region: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    api_url: str | None = None
    login_url: str | None = None
    requests_per_minute: float = DEFAULT_REQUESTS_PER_MINUTE  # the client's own spacing; 0 = off
    user_client_id: str | None = None  # the authorization-code client (agents and the service user)
    user_client_secret: str | None = field(default=None, repr=False)
    public_url: str | None = None  # the service's public base URL; the redirect URI is <public_url>/genesys/callback
    token_keys: tuple[str, ...] = field(default=(), repr=False)  # Fernet keys of tokens at rest; the first encrypts
    act_as: tuple[IdentityKind, ...] | None = None  # None: every configured identity, in IDENTITY_KINDS order
    confirm: bool = False  # read the call back after a change and end applied only when it shows as asked

    def hosts(self) -> tuple[str, str]:
        """Return (API base URL, login base URL), the explicit overrides winning over the region."""
        api, login = region_hosts(self.region) if self.region else ("", "")
        return (self.api_url or api).rstrip("/"), (self.login_url or login).rstrip("/")

    @property
    def users_configured(self) -> bool:
        """Tell whether the service can act as users (the authorization-code client is set)."""
        return bool(self.user_client_id and self.user_client_secret)

    def identities(self) -> tuple[IdentityKind, ...]:
        """Return the identities to try for each event, in order: act_as, else every configured one."""
        configured = {"agent": self.users_configured, "service_user": self.users_configured,
                      "client_credentials": bool(self.client_id and self.client_secret)}
        return tuple(k for k in (self.act_as or IDENTITY_KINDS) if configured[k])

    @property
    def redirect_uri(self) -> str:
        """Return the redirect URI to register on the authorization-code client."""
        return f"{(self.public_url or '').rstrip('/')}{CALLBACK_PATH}"

    @property
    def connect_url(self) -> str:
        """Return the page an agent opens once to connect."""
        return f"{(self.public_url or '').rstrip('/')}{CONNECT_PATH}"


@dataclass(frozen=True)
class Console:
    """The operators' console: who may enter (Genesys users, or the shared password), the session key, idle time."""

    operators: tuple[str, ...] = ()  # Genesys user ids and e-mails, lower-cased
    password: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    idle_seconds: float = 1800.0

    def enabled(self, genesys: Genesys) -> bool:
        """Tell whether anyone can log in: listed operators with the user client, or the password."""
        return bool(self.password) or self.genesys_login(genesys)

    def genesys_login(self, genesys: Genesys) -> bool:
        """Tell whether operators can log in with Genesys (operators listed and the user client configured)."""
        return bool(self.operators) and genesys.users_configured and bool(genesys.token_keys)


@dataclass(frozen=True)
class Settings:
    """Everything the service needs, validated; tests build one directly."""

    sources: Mapping[str, Source]
    rules: tuple[Rule, ...] = ()
    agents: Mapping[str, str] = field(default_factory=dict)
    genesys: Genesys = field(default_factory=Genesys)
    database_url: str = DEFAULT_DATABASE_URL
    max_body_bytes: int = 262144
    trusted_proxies: int = 1
    max_event_age_seconds: float = 120.0
    retry_budget_seconds: float = 30.0
    worker_threads: int = 4
    worker_queue_size: int = 1000
    sweep_interval_seconds: float = 10.0
    stale_claim_seconds: float = 60.0
    max_mute_seconds: float = 0.0
    max_pause_seconds: float = 0.0
    config_path: str = DEFAULT_CONFIG
    keep_days: float = 30.0
    keep_keys_days: float = 400.0  # dedupe keys outlive the events: a captured delivery stays a duplicate
    metrics_token: str | None = field(default=None, repr=False)
    log_format: str = "plain"
    log_level: str = "INFO"
    console: Console = field(default_factory=Console)
    warnings: tuple[str, ...] = ()  # not problems: risks the operator should know of, logged at start-up

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, config_path: str | None = None) -> Settings:
        """Read the environment (.env too, when environ is not given) and the TOML file; list every problem."""
        if environ is None:
            from dotenv import load_dotenv

            load_dotenv(Path.cwd() / ".env", override=False)
            environ = os.environ
        return _Loader(environ, config_path or config_file(environ)).load()


def config_file(environ: Mapping[str, str] | None = None) -> str:
    """Name the TOML file to read: WEBHOOK_CONFIG, else config/webhook.toml."""
    return (os.environ if environ is None else environ).get("WEBHOOK_CONFIG") or DEFAULT_CONFIG


def source_schemes(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return each configured source's scheme as the TOML names it, even while the settings cannot load (for `init`,
    which writes the secrets that are missing); {} when the file cannot be read."""
    loader = _Loader(os.environ if environ is None else environ, config_file(environ))
    sources = loader.read_toml().get("sources", {})
    if not isinstance(sources, dict):
        return {}
    return {name: str(table.get("scheme", "")) for name, table in sources.items() if isinstance(table, dict)}


def unsigned_time_warnings(sources: Mapping[str, Source]) -> tuple[str, ...]:
    """Warn of each source whose scheme signs no timestamp and whose mapping reads no event time: its events are
    dated at receipt, so nothing but the dedupe key tells a captured delivery replayed later from a new one."""
    return tuple(
        f"source {name}: scheme {src.scheme} signs no timestamp and its mapping has no occurred_at, so its events "
        "are dated when they arrive: a captured delivery replayed after its dedupe key is forgotten "
        "([retention] keep_keys_days) would be acted on as new; map the body's event time as occurred_at"
        for name, src in sorted(sources.items())
        if src.scheme not in TIMESTAMPED_SCHEMES and not src.mapping.occurred_at)


def secret_variable(source: str) -> str:
    """Name the environment variable that holds a source's secret(s)."""
    return re.sub(r"[^A-Z0-9]", "_", source.upper()) + "_WEBHOOK_SECRET"


def database_url(url: str) -> str:
    """Normalise a DATABASE_URL: Heroku's postgres:// and plain postgresql:// use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class _Loader:
    """Collects problems while it reads, so that every one is reported at once."""

    def __init__(self, environ: Mapping[str, str], path: str) -> None:
        self.env = environ
        self.path = path
        self.problems: list[str] = []

    def problem(self, key: str, text: str) -> None:
        self.problems.append(f"{self.path}: {key}: {text}" if key else f"{self.path}: {text}")

    def env_problem(self, name: str, text: str) -> None:
        self.problems.append(f"environment: {name}: {text}")

    def load(self) -> Settings:
        doc = self.read_toml()
        if self.problems:  # nothing else can be checked in a file that cannot be read
            raise ConfigError(self.problems)
        for key in sorted(set(doc) - set(TOP_KEYS)):
            self.problem(key, f"unknown section; the file has {', '.join(TOP_KEYS)}")
        intake = self.table(doc, "intake", ("max_body_bytes", "trusted_proxies"))
        processing = self.table(doc, "processing", PROCESSING_KEYS)
        retention = self.table(doc, "retention", ("keep_days", "keep_keys_days"))
        genesys = self.table(doc, "genesys", ("requests_per_minute", "act_as", "confirm"))
        console = self.table(doc, "console", CONSOLE_KEYS)
        settings = Settings(
            sources=self.sources(doc.get("sources", {})),
            rules=self.rules(doc.get("rules", [])),
            agents=self.agents(doc.get("agents", {})),
            genesys=replace(self.genesys(self.requests_per_minute(genesys), self.act_as(genesys)),
                            confirm=self.flag(genesys, "genesys.confirm", False)),
            database_url=database_url(self.env.get("DATABASE_URL") or DEFAULT_DATABASE_URL),
            max_body_bytes=self.number(intake, "intake.max_body_bytes", 262144, int, 1024, 16 * 2**20),
            trusted_proxies=self.number(intake, "intake.trusted_proxies", 1, int, 0, 10),
            **{name: self.number(processing, f"processing.{name}", default, kind, low, high)
               for name, (default, kind, low, high) in PROCESSING_KEYS.items()},
            metrics_token=self.env.get("METRICS_TOKEN", "").strip() or None,
            keep_days=self.number(retention, "retention.keep_days", 30.0, float, 1, 36500),
            keep_keys_days=self.number(retention, "retention.keep_keys_days", 400.0, float, 365, 36500),
            config_path=self.path,
            log_format=self.choice("LOG_FORMAT", ("plain", "json"), "plain"),
            log_level=self.choice("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
        )
        settings = replace(settings, console=self.console(console, settings.genesys))
        if settings.stale_claim_seconds <= settings.retry_budget_seconds + CLAIM_MARGIN_SECONDS:
            self.problem("processing.stale_claim_seconds",
                         f"must be more than retry_budget_seconds + {CLAIM_MARGIN_SECONDS:g} "
                         f"({settings.retry_budget_seconds + CLAIM_MARGIN_SECONDS:g}), or a live event could be "
                         "taken over and acted on twice")
        if settings.keep_keys_days < settings.keep_days:
            self.problem("retention.keep_keys_days", f"must be at least keep_days ({settings.keep_days:g}): a "
                         "delivery whose event is purged must still be recognised as a duplicate")
        if self.problems:
            raise ConfigError(self.problems)
        return replace(settings, warnings=unsigned_time_warnings(settings.sources))

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.env.get(name, "").strip() or default
        if value.lower() in (a.lower() for a in allowed):
            return next(a for a in allowed if a.lower() == value.lower())
        self.env_problem(name, f"{value!r} is not one of {', '.join(allowed)}")
        return default

    def read_toml(self) -> dict[str, Any]:
        try:
            with open(self.path, "rb") as handle:
                return tomllib.load(handle)
        except FileNotFoundError:
            self.problem("", "file not found; set WEBHOOK_CONFIG or run from the project folder")
        except tomllib.TOMLDecodeError as exc:
            self.problem("", f"not valid TOML: {exc}")
        except (OSError, UnicodeDecodeError) as exc:
            self.problem("", f"cannot be read: {exc}")
        except (ValueError, RecursionError) as exc:  # an integer of 4,300+ digits, arrays nested thousands deep
            self.problem("", f"not valid TOML: {str(exc)[:200] or type(exc).__name__}")
        return {}

    def table(self, doc: Mapping[str, Any], key: str, known: Any) -> Mapping[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            self.problem(key, "must be a table")
            return {}
        for name in sorted(set(value) - set(known)):
            self.problem(f"{key}.{name}", f"unknown key; [{key}] has {', '.join(known)}")
        return value

    def number(self, table: Mapping[str, Any], key: str, default: Any, kind: type, low: float, high: float) -> Any:
        value = table.get(key.rsplit(".", 1)[-1], default)
        wrong_kind = kind is int and not isinstance(value, int)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or wrong_kind:
            self.problem(key, f"must be a{'n integer' if kind is int else ' number'}, got {value!r}")
            return default
        if isinstance(value, float) and not math.isfinite(value):  # TOML has nan and inf
            self.problem(key, f"must be a finite number, got {value!r}")
            return default
        if value < low:
            self.problem(key, f"must be at least {low}, got {value}")
            return default
        if value > high:  # a typo's extra zeros: millions of threads, a purge that cannot name its date
            shown = str(value) if len(str(value)) <= 20 else f"{str(value)[:17]}..."
            self.problem(key, f"must be at most {high:,.0f}, got {shown}")
            return default
        return kind(value)

    def sources(self, value: Any) -> dict[str, Source]:
        if not isinstance(value, dict) or not value:
            self.problem("sources", 'no source defined; add a [sources.<name>] table with scheme and mapping')
            return {}
        return {name: src for name, table in value.items() if (src := self.source(name, table)) is not None}

    def source(self, name: str, table: Any) -> Source | None:
        key = f"sources.{name}"
        if not SOURCE_NAME_RE.match(name):
            self.problem(key, "a source name is lower-case letters, digits, - and _ (it is part of the URL)")
            return None
        if not isinstance(table, dict):
            self.problem(key, "must be a table with scheme and mapping")
            return None
        for extra in sorted(set(table) - set(SOURCE_KEYS)):
            self.problem(f"{key}.{extra}", f"unknown key; a source has {', '.join(SOURCE_KEYS)}")
        ok = True
        scheme = table.get("scheme")
        if not isinstance(scheme, str) or scheme not in SCHEMES:
            self.problem(f"{key}.scheme", f"unknown scheme {scheme!r}; use one of {', '.join(sorted(SCHEMES))}")
            ok = False
        try:
            mapping = field_map(table.get("mapping", "generic"))
        except ValueError as exc:
            self.problem(f"{key}.mapping", str(exc))
            ok = False
        header = table.get("header", DEFAULT_HMAC_HEADER)
        if "header" in table and scheme != "hmac-sha256":
            self.problem(f"{key}.header", "only the hmac-sha256 scheme takes a header name")
        if not isinstance(header, str) or not re.fullmatch(r"[A-Za-z0-9-]{1,100}", header):
            self.problem(f"{key}.header", "must be an HTTP header name such as X-Hub-Signature-256")
            ok = False
        tolerance = self.number(table, f"{key}.tolerance_seconds", DEFAULT_TOLERANCE, float, 1, DAY)
        secrets = self.secrets(name)
        if not ok or not secrets:
            return None
        return Source(name, str(scheme), mapping, secrets, tolerance, header)

    def secrets(self, source: str) -> tuple[str, ...]:
        variable = secret_variable(source)
        values = tuple(s.strip() for s in self.env.get(variable, "").split(",") if s.strip())
        if not values:
            self.env_problem(variable, f"unset or empty; set the signing secret of source {source} "
                             "(several separated by commas while rotating), or run `flask --app wsgi init`")
        return values

    def rules(self, value: Any) -> tuple[Rule, ...]:
        if not isinstance(value, list):
            self.problem("rules", "must be an array of tables: [[rules]]")
            return ()
        rules = []
        for number, table in enumerate(value, start=1):
            try:
                if not isinstance(table, dict):
                    raise ValueError("must be a table")
                rules.append(rule_from_table(table))
            except ValueError as exc:
                self.problem(f"rules[{number}]", str(exc))
        return tuple(rules)

    def agents(self, value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            self.problem("agents", 'must be a table of "source:crm_id" = "e-mail or Genesys user id"')
            return {}
        bad = [k for k, v in value.items() if not isinstance(v, str) or not v.strip()]
        for key in bad:
            self.problem(f"agents.{key}", "must be a Genesys user id or an e-mail")
        return {k: v.strip() for k, v in value.items() if k not in bad}

    def requests_per_minute(self, table: Mapping[str, Any]) -> float:
        key = "genesys.requests_per_minute"
        value: float = self.number(table, key, DEFAULT_REQUESTS_PER_MINUTE, float, 0, 100_000)
        if 0 < value < MIN_REQUESTS_PER_MINUTE:
            self.problem(key, f"must be 0 (no spacing) or at least {MIN_REQUESTS_PER_MINUTE:g}, got {value:g}; "
                         "Genesys allows 300 a minute per client-credentials token unless support raised it")
            return DEFAULT_REQUESTS_PER_MINUTE
        return value

    def flag(self, table: Mapping[str, Any], key: str, default: bool) -> bool:
        value = table.get(key.rsplit(".", 1)[-1], default)
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false, got {value!r}")
            return default
        return value

    def act_as(self, table: Mapping[str, Any]) -> tuple[IdentityKind, ...] | None:
        value = table.get("act_as")
        if value is None:
            return None
        kinds = [k for k in value if k in IDENTITY_KINDS] if isinstance(value, list) else []
        if not isinstance(value, list) or len(kinds) != len(value) or not kinds or len(set(kinds)) != len(kinds):
            self.problem("genesys.act_as", f"must be a non-empty list of distinct identities out of "
                         f"{', '.join(repr(k) for k in IDENTITY_KINDS)}, got {value!r}")
            return None
        return tuple(kinds)

    def url(self, name: str) -> str | None:
        """Read an http(s) base URL; http only for a loopback host (tokens and secrets travel on it)."""
        value = self.env.get(name, "").strip().rstrip("/") or None
        if value is None:
            return None
        scheme, _, rest = value.partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        host = host if host.startswith("[") else host.split(":", 1)[0]
        if scheme not in ("http", "https") or not host:
            self.env_problem(name, f"{value!r} is not an http(s) URL")
        elif scheme == "http" and host.lower() not in LOOPBACK_HOSTS:
            self.env_problem(name, f"{value!r} is plain http to {host}: use https (http is allowed for a loopback "
                             "host only, for tests and local proxies)")
        elif name == "PUBLIC_URL" and rest.partition("/")[2]:
            self.env_problem(name, f"{value!r} has a path: the service answers at the root of its host "
                             "(/genesys/connect, /webhooks/...), so PUBLIC_URL is https://<host> alone")
        return value

    def genesys(self, requests_per_minute: float = DEFAULT_REQUESTS_PER_MINUTE,
                act_as: tuple[IdentityKind, ...] | None = None) -> Genesys:
        dry = self.env.get("GENESYS_DRY_RUN", "").strip().lower()
        if dry not in TRUE_WORDS | FALSE_WORDS:
            self.env_problem("GENESYS_DRY_RUN", f"{dry!r} is not true or false")
        result = Genesys(
            dry_run=dry in TRUE_WORDS,
            region=self.env.get("GENESYS_REGION", "").strip() or None,
            client_id=self.env.get("GENESYS_CLIENT_ID", "").strip() or None,
            client_secret=self.env.get("GENESYS_CLIENT_SECRET", "").strip() or None,
            api_url=self.url("GENESYS_API_URL"),
            login_url=self.url("GENESYS_LOGIN_URL"),
            requests_per_minute=requests_per_minute,
            user_client_id=self.env.get("GENESYS_USER_CLIENT_ID", "").strip() or None,
            user_client_secret=self.env.get("GENESYS_USER_CLIENT_SECRET", "").strip() or None,
            public_url=self.url("PUBLIC_URL"),
            token_keys=self.token_keys(),
            act_as=act_as,
        )
        self.user_identities(result)
        if result.region:
            try:
                region_hosts(result.region)
            except ValueError as exc:
                self.env_problem("GENESYS_REGION", str(exc))
        if result.dry_run:
            return result
        if result.client_id or not result.users_configured:
            for name, value in (("GENESYS_CLIENT_ID", result.client_id),
                                ("GENESYS_CLIENT_SECRET", result.client_secret)):
                if not value:
                    self.env_problem(name, "unset; set the OAuth client-credentials client (or the user client, "
                                     "GENESYS_USER_CLIENT_ID and _SECRET), or GENESYS_DRY_RUN=true")
        if not result.region and not (result.api_url and result.login_url):
            self.env_problem("GENESYS_REGION", "unset; set your org's region (e.g. mypurecloud.ie or eu_west_1), "
                             "or GENESYS_DRY_RUN=true")
        return result


    def console(self, table: Mapping[str, Any], genesys: Genesys) -> Console:
        """Read [console] and CONSOLE_PASSWORD / SECRET_KEY; a console anyone can enter needs a session key."""
        value = table.get("operators", [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.problem("console.operators", "must be a list of Genesys user ids or e-mails, e.g. "
                         '["jane.agent@example.com", "50fcd33c-..."]')
            value = []
        idle = self.number(table, "console.idle_minutes", 30.0, float, 1, 7 * 24 * 60)
        console = Console(operators=tuple(v.strip().lower() for v in value),
                          password=self.env.get("CONSOLE_PASSWORD", "") or None,
                          secret_key=self.env.get("SECRET_KEY", "").strip() or None, idle_seconds=idle * 60)
        if console.operators and not genesys.users_configured:
            self.problem("console.operators", "operators log in with Genesys through the authorization-code client: "
                         "set GENESYS_USER_CLIENT_ID and _SECRET (README: \"Acting as a user\"), or set "
                         "CONSOLE_PASSWORD and remove the operators")
        if console.password is not None and len(console.password) < 12:
            self.env_problem("CONSOLE_PASSWORD", "shorter than 12 characters; choose a longer one (it guards replays "
                             "and disconnections)")
        if console.enabled(genesys) and (console.secret_key or "") == "":
            self.env_problem("SECRET_KEY", "unset; the console's sessions are signed with it: `flask --app wsgi "
                             "init` writes one into a new .env, or set one of at least 32 random characters "
                             "(python -c 'import secrets; print(secrets.token_urlsafe(48))')")
        elif console.secret_key is not None and len(console.secret_key) < MIN_SECRET_KEY_CHARS:
            self.env_problem("SECRET_KEY", f"shorter than {MIN_SECRET_KEY_CHARS} characters; use a long random value "
                             "(python -c 'import secrets; print(secrets.token_urlsafe(48))')")
        return console

    def token_keys(self) -> tuple[str, ...]:
        try:
            return parse_keys(self.env.get("TOKEN_ENCRYPTION_KEY", ""))
        except ValueError as exc:
            self.env_problem("TOKEN_ENCRYPTION_KEY", str(exc))
            return ()

    def user_identities(self, genesys: Genesys) -> None:
        """Check what acting as a user needs: both halves of the client, the public URL, a key; act_as configured."""
        if genesys.user_client_id or genesys.user_client_secret:
            for name, value in (("GENESYS_USER_CLIENT_ID", genesys.user_client_id),
                                ("GENESYS_USER_CLIENT_SECRET", genesys.user_client_secret)):
                if not value:
                    self.env_problem(name, "unset while the other half of the authorization-code client is set; "
                                     "set both, or neither")
        if genesys.users_configured:
            if genesys.dry_run and not genesys.region and not (genesys.api_url and genesys.login_url):
                self.env_problem("GENESYS_REGION", "unset; connecting users needs your org's login host: set the "
                                 "region (e.g. mypurecloud.ie or eu_west_1)")
            if not genesys.public_url:
                self.env_problem("PUBLIC_URL", "unset; set the service's public base URL (https://<your host>): the "
                                 f"OAuth redirect URI is PUBLIC_URL{CALLBACK_PATH}")
            if not genesys.token_keys and "TOKEN_ENCRYPTION_KEY" not in " ".join(self.problems):
                self.env_problem("TOKEN_ENCRYPTION_KEY", "unset; user tokens are kept encrypted: `flask --app wsgi "
                                 "init` writes a fresh key into a new .env, or set one (several comma-separated "
                                 "while rotating, the first encrypts)")
        for kind in genesys.act_as or ():
            if kind not in genesys.identities() and not genesys.dry_run:
                needs = "GENESYS_CLIENT_ID" if kind == "client_credentials" else "GENESYS_USER_CLIENT_ID"
                self.problem("genesys.act_as", f"{kind!r} is listed but not configured: set {needs} and its secret, "
                             "or take it out of act_as")


PROCESSING_KEYS: dict[str, tuple[Any, type, float, float]] = {  # default, kind, lowest, highest
    "max_event_age_seconds": (120.0, float, 1, DAY),
    "retry_budget_seconds": (30.0, float, 0, 3600),
    "worker_threads": (4, int, 0, 64),
    "worker_queue_size": (1000, int, 1, 1_000_000),
    "sweep_interval_seconds": (10.0, float, 0.1, 3600),
    "stale_claim_seconds": (60.0, float, 1, DAY),
    "max_mute_seconds": (0.0, float, 0, DAY),  # undo a mute the service applied and nothing undid; 0 = off
    "max_pause_seconds": (0.0, float, 0, DAY),  # resume a recording the service paused and nothing resumed; 0 = off
}
