"""Genesys Cloud regions: SDK region names and the domains they stand for."""

from __future__ import annotations

REGIONS: dict[str, str] = {
    "us_east_1": "mypurecloud.com",
    "eu_west_1": "mypurecloud.ie",
    "ap_southeast_2": "mypurecloud.com.au",
    "ap_northeast_1": "mypurecloud.jp",
    "eu_central_1": "mypurecloud.de",
    "us_west_2": "usw2.pure.cloud",
    "ca_central_1": "cac1.pure.cloud",
    "ap_northeast_2": "apne2.pure.cloud",
    "eu_west_2": "euw2.pure.cloud",
    "ap_south_1": "aps1.pure.cloud",
    "us_east_2": "use2.us-gov-pure.cloud",
    "sa_east_1": "sae1.pure.cloud",
    "me_central_1": "mec1.pure.cloud",
    "ap_northeast_3": "apne3.pure.cloud",
    "eu_central_2": "euc2.pure.cloud",
    "mx_central_1": "mxc1.pure.cloud",
    "ap_southeast_1": "apse1.pure.cloud",
    "eusc_de_east_1": "edee1.eusc-pure.cloud",
}


def region_domain(region: str) -> str:
    """Return the domain of a region given as an SDK name or as a domain; ValueError if unknown."""
    name = region.strip().lower()
    for prefix in ("https://", "api.", "login."):
        name = name.removeprefix(prefix)
    if name in REGIONS:
        return REGIONS[name]
    if name in REGIONS.values():
        return name
    known = ", ".join(sorted(REGIONS.values()))
    raise ValueError(f"unknown Genesys region {region!r}; use an SDK name such as eu_west_1 or a domain: {known}")


def region_hosts(region: str) -> tuple[str, str]:
    """Return the (API base URL, login base URL) of a region."""
    domain = region_domain(region)
    return f"https://api.{domain}", f"https://login.{domain}"
