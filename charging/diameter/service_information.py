"""What Service-Information says about where a service is used (pure): the called party
(IMS-Information Called-Party-Address, or SMS-Information Recipient-Address), the
direction (IMS Role-Of-Node) and the visited network (PS-Information
3GPP-SGSN-MCC-MNC, roaming when outside the catalog's home networks)."""

from __future__ import annotations

import re

from diameter.message.avp import Avp

from charging.catalog import Usage
from charging.diameter import dictionary as d
from charging.diameter.base import text
from charging.diameter.codec import Refused, value

TERMINATING_ROLE = 1  # Role-Of-Node
DIGITS = re.compile(r"^[0-9]{1,20}$")
MCC_MNC = re.compile(r"^[0-9]{5,6}$")


def usage_of(avps: list[Avp]) -> tuple[Usage, bool]:
    """Called party (IMS or SMS), visited network (PS) and direction from
    Service-Information."""
    info = d.find(avps, d.SERVICE_INFORMATION)
    if info is None:
        return Usage(), False
    members = value(info)
    destination, visited, terminating = "", "", False
    ims = d.find(members, d.IMS_INFORMATION)
    if ims is not None:
        ims_members = value(ims)
        called = d.find(ims_members, d.CALLED_PARTY_ADDRESS)
        if called is not None:
            destination = number_of(called)
        role = d.find(ims_members, d.ROLE_OF_NODE)
        terminating = role is not None and value(role) == TERMINATING_ROLE
    sms = d.find(members, d.SMS_INFORMATION)
    if sms is not None and not destination:
        for info_avp in d.find_all(value(sms), d.RECIPIENT_INFO):
            for address in d.find_all(value(info_avp), d.RECIPIENT_ADDRESS):
                data = d.find(value(address), d.ADDRESS_DATA)
                if data is not None:
                    destination = destination or number_of(data)
    ps = d.find(members, d.PS_INFORMATION)
    if ps is not None:
        plmn = d.find(value(ps), d.SGSN_MCC_MNC)
        if plmn is not None:
            visited = text(plmn)
            if not MCC_MNC.match(visited):
                raise Refused(d.Code.INVALID_AVP_VALUE, plmn)
    return Usage(destination, visited), terminating


def number_of(avp: Avp) -> str:
    """Digits of a tel:, sip: or plain address (``tel:+33123456789``, ``sip:+331...@ims``)."""
    raw = text(avp)
    for scheme in ("tel:", "sip:", "sips:"):
        raw = raw.removeprefix(scheme)
    raw = raw.split("@", 1)[0].split(";", 1)[0].removeprefix("+")
    if not DIGITS.match(raw):
        raise Refused(d.Code.INVALID_AVP_VALUE, avp)
    return raw
