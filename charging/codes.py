"""Result codes carried in answers, numbered as in RFC 8506 (Diameter Credit Control)."""

from __future__ import annotations

from enum import IntEnum


class ResultCode(IntEnum):
    SUCCESS = 2001
    END_USER_SERVICE_DENIED = 4010
    CREDIT_CONTROL_NOT_APPLICABLE = 4011
    CREDIT_LIMIT_REACHED = 4012
    UNKNOWN_SESSION_ID = 5002
    INVALID_AVP_VALUE = 5004
    MISSING_AVP = 5005
    UNABLE_TO_COMPLY = 5012
    USER_UNKNOWN = 5030
    RATING_FAILED = 5031

    @property
    def granted(self) -> bool:
        """Whether the service may go on (units granted or no credit control needed)."""
        return self in (ResultCode.SUCCESS, ResultCode.CREDIT_CONTROL_NOT_APPLICABLE)
