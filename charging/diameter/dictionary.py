"""The AVPs this door reads and writes, by python-diameter's dictionary, and the M-bit rule.

Codes come from ``diameter.message.constants`` (the library's dictionary, generated from
the RFCs and 3GPP specifications), so a code is never typed twice. The M-bit rule
(RFC 6733 section 4.1): an AVP with the M bit that the receiver does not recognise makes
the whole request fail with 5001 DIAMETER_AVP_UNSUPPORTED, naming it in Failed-AVP. We
recognise every AVP the library's dictionary knows: what we do not use of those (QoS,
location, charging id) is read past, as TS 32.299 allows an OCS to.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

from diameter.message import constants as c
from diameter.message.avp import Avp, AvpGrouped
from diameter.message.avp.avp import get_avp_dictionary_entry

TGPP = c.VENDOR_TGPP
CREDIT_CONTROL_APP = c.APP_DIAMETER_CREDIT_CONTROL_APPLICATION  # 4
RELAY_APP = c.APP_RELAY  # 0xffffffff

# Commands
CAPABILITIES_EXCHANGE = c.CMD_CAPABILITIES_EXCHANGE  # 257
DEVICE_WATCHDOG = c.CMD_DEVICE_WATCHDOG  # 280
DISCONNECT_PEER = c.CMD_DISCONNECT_PEER  # 282
CREDIT_CONTROL = c.CMD_CREDIT_CONTROL  # 272
RE_AUTH = c.CMD_RE_AUTH  # 258
ABORT_SESSION = c.CMD_ABORT_SESSION  # 274

# (code, vendor) of every AVP this door reads or writes.
SESSION_ID = (c.AVP_SESSION_ID, 0)
ORIGIN_HOST = (c.AVP_ORIGIN_HOST, 0)
ORIGIN_REALM = (c.AVP_ORIGIN_REALM, 0)
DESTINATION_HOST = (c.AVP_DESTINATION_HOST, 0)
DESTINATION_REALM = (c.AVP_DESTINATION_REALM, 0)
AUTH_APPLICATION_ID = (c.AVP_AUTH_APPLICATION_ID, 0)
ACCT_APPLICATION_ID = (c.AVP_ACCT_APPLICATION_ID, 0)
VENDOR_SPECIFIC_APPLICATION_ID = (c.AVP_VENDOR_SPECIFIC_APPLICATION_ID, 0)
VENDOR_ID = (c.AVP_VENDOR_ID, 0)
SUPPORTED_VENDOR_ID = (c.AVP_SUPPORTED_VENDOR_ID, 0)
PRODUCT_NAME = (c.AVP_PRODUCT_NAME, 0)
HOST_IP_ADDRESS = (c.AVP_HOST_IP_ADDRESS, 0)
FIRMWARE_REVISION = (c.AVP_FIRMWARE_REVISION, 0)
INBAND_SECURITY_ID = (c.AVP_INBAND_SECURITY_ID, 0)
ORIGIN_STATE_ID = (c.AVP_ORIGIN_STATE_ID, 0)
RESULT_CODE = (c.AVP_RESULT_CODE, 0)
EXPERIMENTAL_RESULT = (c.AVP_EXPERIMENTAL_RESULT, 0)
EXPERIMENTAL_RESULT_CODE = (c.AVP_EXPERIMENTAL_RESULT_CODE, 0)
FAILED_AVP = (c.AVP_FAILED_AVP, 0)
ERROR_MESSAGE = (c.AVP_ERROR_MESSAGE, 0)
DISCONNECT_CAUSE = (c.AVP_DISCONNECT_CAUSE, 0)
CC_REQUEST_TYPE = (c.AVP_CC_REQUEST_TYPE, 0)
CC_REQUEST_NUMBER = (c.AVP_CC_REQUEST_NUMBER, 0)
SERVICE_CONTEXT_ID = (c.AVP_SERVICE_CONTEXT_ID, 0)
SUBSCRIPTION_ID = (c.AVP_SUBSCRIPTION_ID, 0)
SUBSCRIPTION_ID_TYPE = (c.AVP_SUBSCRIPTION_ID_TYPE, 0)
SUBSCRIPTION_ID_DATA = (c.AVP_SUBSCRIPTION_ID_DATA, 0)
MULTIPLE_SERVICES_INDICATOR = (c.AVP_MULTIPLE_SERVICES_INDICATOR, 0)
MSCC = (c.AVP_MULTIPLE_SERVICES_CREDIT_CONTROL, 0)
REQUESTED_SERVICE_UNIT = (c.AVP_REQUESTED_SERVICE_UNIT, 0)
USED_SERVICE_UNIT = (c.AVP_USED_SERVICE_UNIT, 0)
GRANTED_SERVICE_UNIT = (c.AVP_GRANTED_SERVICE_UNIT, 0)
CC_TIME = (c.AVP_CC_TIME, 0)
CC_TOTAL_OCTETS = (c.AVP_CC_TOTAL_OCTETS, 0)
CC_INPUT_OCTETS = (c.AVP_CC_INPUT_OCTETS, 0)
CC_OUTPUT_OCTETS = (c.AVP_CC_OUTPUT_OCTETS, 0)
CC_SERVICE_SPECIFIC_UNITS = (c.AVP_CC_SERVICE_SPECIFIC_UNITS, 0)
CC_MONEY = (c.AVP_CC_MONEY, 0)
UNIT_VALUE = (c.AVP_UNIT_VALUE, 0)
VALUE_DIGITS = (c.AVP_VALUE_DIGITS, 0)
EXPONENT = (c.AVP_EXPONENT, 0)
CURRENCY_CODE = (c.AVP_CURRENCY_CODE, 0)
RATING_GROUP = (c.AVP_RATING_GROUP, 0)
SERVICE_IDENTIFIER = (c.AVP_SERVICE_IDENTIFIER, 0)
VALIDITY_TIME = (c.AVP_VALIDITY_TIME, 0)
FINAL_UNIT_INDICATION = (c.AVP_FINAL_UNIT_INDICATION, 0)
FINAL_UNIT_ACTION = (c.AVP_FINAL_UNIT_ACTION, 0)
REDIRECT_SERVER = (c.AVP_REDIRECT_SERVER, 0)
REDIRECT_ADDRESS_TYPE = (c.AVP_REDIRECT_ADDRESS_TYPE, 0)
REDIRECT_SERVER_ADDRESS = (c.AVP_REDIRECT_SERVER_ADDRESS, 0)
RESTRICTION_FILTER_RULE = (c.AVP_RESTRICTION_FILTER_RULE, 0)
FILTER_ID = (c.AVP_FILTER_ID, 0)
TARIFF_TIME_CHANGE = (c.AVP_TARIFF_TIME_CHANGE, 0)
TARIFF_CHANGE_USAGE = (c.AVP_TARIFF_CHANGE_USAGE, 0)
REQUESTED_ACTION = (c.AVP_REQUESTED_ACTION, 0)
EVENT_TIMESTAMP = (c.AVP_EVENT_TIMESTAMP, 0)
CHECK_BALANCE_RESULT = (c.AVP_CHECK_BALANCE_RESULT, 0)
COST_INFORMATION = (c.AVP_COST_INFORMATION, 0)
TERMINATION_CAUSE = (c.AVP_TERMINATION_CAUSE, 0)
RE_AUTH_REQUEST_TYPE = (c.AVP_RE_AUTH_REQUEST_TYPE, 0)
REPORTING_REASON = (c.AVP_TGPP_3GPP_REPORTING_REASON, TGPP)  # TS 32.299 7.2.175, code 872
REFUND_INFORMATION = (c.AVP_TGPP_REFUND_INFORMATION, TGPP)
VOLUME_QUOTA_THRESHOLD = (c.AVP_TGPP_VOLUME_QUOTA_THRESHOLD, TGPP)
TIME_QUOTA_THRESHOLD = (c.AVP_TGPP_TIME_QUOTA_THRESHOLD, TGPP)
SERVICE_INFORMATION = (c.AVP_TGPP_SERVICE_INFORMATION, TGPP)
PS_INFORMATION = (c.AVP_TGPP_PS_INFORMATION, TGPP)
IMS_INFORMATION = (c.AVP_TGPP_IMS_INFORMATION, TGPP)
SMS_INFORMATION = (c.AVP_TGPP_SMS_INFORMATION, TGPP)
CALLED_PARTY_ADDRESS = (c.AVP_TGPP_CALLED_PARTY_ADDRESS, TGPP)
RECIPIENT_INFO = (c.AVP_TGPP_RECIPIENT_INFO, TGPP)
RECIPIENT_ADDRESS = (c.AVP_TGPP_RECIPIENT_ADDRESS, TGPP)
ADDRESS_DATA = (c.AVP_TGPP_ADDRESS_DATA, TGPP)
SGSN_MCC_MNC = (c.AVP_TGPP_3GPP_SGSN_MCC_MNC, TGPP)
ROLE_OF_NODE = (c.AVP_TGPP_ROLE_OF_NODE, TGPP)

Key = tuple[int, int]


class Code(IntEnum):
    """Result codes this door answers beyond the core's (``charging.codes``)."""

    SUCCESS = 2001
    COMMAND_UNSUPPORTED = 3001
    TOO_BUSY = 3004
    APPLICATION_UNSUPPORTED = 3007
    INVALID_HDR_BITS = 3008
    UNKNOWN_PEER = 3010
    AVP_UNSUPPORTED = 5001
    INVALID_AVP_VALUE = 5004
    MISSING_AVP = 5005
    NO_COMMON_APPLICATION = 5010
    UNSUPPORTED_VERSION = 5011
    UNABLE_TO_COMPLY = 5012
    INVALID_AVP_LENGTH = 5014

    @property
    def protocol_error(self) -> bool:
        """3xxx: the answer carries the E bit (RFC 6733 section 7.1.3)."""
        return 3000 <= self < 4000


def find(avps: Iterable[Avp], key: Key) -> Avp | None:
    """The first AVP of ``key`` in a list."""
    code, vendor = key
    for avp in avps:
        if avp.code == code and avp.vendor_id == vendor:
            return avp
    return None


def find_all(avps: Iterable[Avp], key: Key) -> list[Avp]:
    code, vendor = key
    return [avp for avp in avps if avp.code == code and avp.vendor_id == vendor]


def known(avp: Avp) -> bool:
    return get_avp_dictionary_entry(avp.code, avp.vendor_id) is not None


def unsupported_mandatory(avps: Iterable[Avp]) -> Avp | None:
    """The first AVP with the M bit, at any depth, that the dictionary does not know."""
    for avp in avps:
        if not known(avp):
            if avp.is_mandatory:
                return avp
            continue
        if isinstance(avp, AvpGrouped):
            inner = unsupported_mandatory(avp.value)
            if inner is not None:
                return inner
    return None
