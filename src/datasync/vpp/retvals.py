"""VPP's API return values (``foreach_vnet_error``) and how the agent treats each one.

The table is VPP's ``vnet_api_errors`` list (``src/vnet/error.h``; value, name, text).
``classify(retval, op)`` says what a retval means for the agent: transient conditions are retried,
invalid or unsupported requests fail for good, and "already exists" on a create or "not
found" on a delete count as success.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .errors import VppApiError

__all__ = [
    "RETVAL_NAMES",
    "RETVAL_TEXT",
    "VppApiError",
    "classify",
    "retval_by_name",
    "retval_name",
]

# value -> (name, text), as VPP defines them
_TABLE: dict[int, tuple[str, str]] = {
    -1: ("UNSPECIFIED", "Unspecified Error"),
    -2: ("INVALID_SW_IF_INDEX", "Invalid sw_if_index"),
    -3: ("NO_SUCH_FIB", "No such FIB / VRF"),
    -4: ("NO_SUCH_INNER_FIB", "No such inner FIB / VRF"),
    -5: ("NO_SUCH_LABEL", "No such label"),
    -6: ("NO_SUCH_ENTRY", "No such entry"),
    -7: ("INVALID_VALUE", "Invalid value"),
    -8: ("INVALID_VALUE_2", "Invalid value #2"),
    -9: ("UNIMPLEMENTED", "Unimplemented"),
    -10: ("INVALID_SW_IF_INDEX_2", "Invalid sw_if_index #2"),
    -11: ("SYSCALL_ERROR_1", "System call error #1"),
    -12: ("SYSCALL_ERROR_2", "System call error #2"),
    -13: ("SYSCALL_ERROR_3", "System call error #3"),
    -14: ("SYSCALL_ERROR_4", "System call error #4"),
    -15: ("SYSCALL_ERROR_5", "System call error #5"),
    -16: ("SYSCALL_ERROR_6", "System call error #6"),
    -17: ("SYSCALL_ERROR_7", "System call error #7"),
    -18: ("SYSCALL_ERROR_8", "System call error #8"),
    -19: ("SYSCALL_ERROR_9", "System call error #9"),
    -20: ("SYSCALL_ERROR_10", "System call error #10"),
    -30: ("FEATURE_DISABLED", "Feature disabled by configuration"),
    -31: ("INVALID_REGISTRATION", "Invalid registration"),
    -50: ("NEXT_HOP_NOT_IN_FIB", "Next hop not in FIB"),
    -51: ("UNKNOWN_DESTINATION", "Unknown destination"),
    -52: ("NO_PATHS_IN_ROUTE", "No paths specified in route"),
    -53: ("NEXT_HOP_NOT_FOUND_MP", "Next hop not found (multipath)"),
    -54: ("NO_MATCHING_INTERFACE", "No matching interface for probe"),
    -55: ("INVALID_VLAN", "Invalid VLAN"),
    -56: ("VLAN_ALREADY_EXISTS", "VLAN subif already exists"),
    -57: ("INVALID_SRC_ADDRESS", "Invalid src address"),
    -58: ("INVALID_DST_ADDRESS", "Invalid dst address"),
    -59: ("ADDRESS_LENGTH_MISMATCH", "Address length mismatch"),
    -60: ("ADDRESS_NOT_FOUND_FOR_INTERFACE", "Address not found for interface"),
    -61: ("ADDRESS_NOT_DELETABLE", "Address not deletable"),
    -62: ("IP6_NOT_ENABLED", "ip6 not enabled"),
    -63: ("NO_SUCH_NODE", "No such graph node"),
    -64: ("NO_SUCH_NODE2", "No such graph node #2"),
    -65: ("NO_SUCH_TABLE", "No such table"),
    -66: ("NO_SUCH_TABLE2", "No such table #2"),
    -67: ("NO_SUCH_TABLE3", "No such table #3"),
    -68: ("SUBIF_ALREADY_EXISTS", "Subinterface already exists"),
    -69: ("SUBIF_CREATE_FAILED", "Subinterface creation failed"),
    -70: ("INVALID_MEMORY_SIZE", "Invalid memory size requested"),
    -71: ("INVALID_INTERFACE", "Invalid interface"),
    -73: ("INVALID_ARGUMENT", "Invalid argument"),
    -74: ("UNEXPECTED_INTF_STATE", "Unexpected interface state"),
    -75: ("TUNNEL_EXIST", "Tunnel already exists"),
    -76: ("INVALID_DECAP_NEXT", "Invalid decap-next"),
    -77: ("RESPONSE_NOT_READY", "Response not ready"),
    -78: ("NOT_CONNECTED", "Not connected to the data plane"),
    -79: ("IF_ALREADY_EXISTS", "Interface already exists"),
    -81: ("VALUE_EXIST", "Value already exists"),
    -82: ("SAME_SRC_DST", "Source and destination are the same"),
    -84: ("SR_POLICY_NAME_NOT_PRESENT", "Segment routing policy name required"),
    -85: ("NOT_RUNNING_AS_ROOT", "Not running as root"),
    -86: ("ALREADY_CONNECTED", "Connection to the data plane already exists"),
    -87: ("UNSUPPORTED_JNI_VERSION", "Unsupported JNI version"),
    -88: ("IP_PREFIX_INVALID", "IP prefix invalid (masked bits set in address"),
    -89: ("INVALID_WORKER", "Invalid worker thread"),
    -90: ("LISP_DISABLED", "LISP is disabled"),
    -91: ("CLASSIFY_TABLE_NOT_FOUND", "Classify table not found"),
    -92: ("INVALID_EID_TYPE", "Unsupported LISP EID type"),
    -93: ("CANNOT_CREATE_PCAP_FILE", "Cannot create pcap file"),
    -97: ("INVALID_ADDRESS_FAMILY", "Invalid address family"),
    -98: ("INVALID_SUB_SW_IF_INDEX", "Invalid sub-interface sw_if_index"),
    -99: ("TABLE_TOO_BIG", "Table too big"),
    -100: ("CANNOT_ENABLE_DISABLE_FEATURE", "Cannot enable/disable feature"),
    -101: ("BFD_EEXIST", "Duplicate BFD object"),
    -102: ("BFD_ENOENT", "No such BFD object"),
    -103: ("BFD_EINUSE", "BFD object in use"),
    -104: ("BFD_NOTSUPP", "BFD feature not supported"),
    -105: ("ADDRESS_IN_USE", "Address in use"),
    -106: ("ADDRESS_NOT_IN_USE", "Address not in use"),
    -107: ("QUEUE_FULL", "Queue full"),
    -108: ("APP_UNSUPPORTED_CFG", "Unsupported application config"),
    -109: ("URI_FIFO_CREATE_FAILED", "URI FIFO segment create failed"),
    -110: ("LISP_RLOC_LOCAL", "RLOC address is local"),
    -111: ("BFD_EAGAIN", "BFD object cannot be manipulated at this time"),
    -112: ("INVALID_GPE_MODE", "Invalid GPE mode"),
    -113: ("LISP_GPE_ENTRIES_PRESENT", "LISP GPE entries are present"),
    -114: ("ADDRESS_FOUND_FOR_INTERFACE", "Address found for interface"),
    -115: ("SESSION_CONNECT", "Session failed to connect"),
    -116: ("ENTRY_ALREADY_EXISTS", "Entry already exists"),
    -117: ("SVM_SEGMENT_CREATE_FAIL", "Svm segment create fail"),
    -118: ("APPLICATION_NOT_ATTACHED", "Application not attached"),
    -119: ("BD_ALREADY_EXISTS", "Bridge domain already exists"),
    -120: ("BD_IN_USE", "Bridge domain has member interfaces"),
    -121: ("BD_NOT_MODIFIABLE", "Bridge domain 0 can't be deleted/modified"),
    -122: ("BD_ID_EXCEED_MAX", "Bridge domain ID exceeds 16M limit"),
    -123: ("SUBIF_DOESNT_EXIST", "Subinterface doesn't exist"),
    -125: ("INVALID_QUEUE", "Invalid queue"),
    -126: ("UNSUPPORTED", "Unsupported"),
    -128: ("APP_INVALID_NS", "Invalid application namespace"),
    -129: ("APP_WRONG_NS_SECRET", "Wrong app namespace secret"),
    -130: ("APP_CONNECT_SCOPE", "Connect scope"),
    -131: ("APP_ALREADY_ATTACHED", "App already attached"),
    -132: ("SESSION_REDIRECT", "Redirect failed"),
    -133: ("ILLEGAL_NAME", "Illegal name"),
    -134: ("NO_NAME_SERVERS", "No name servers configured"),
    -135: ("NAME_SERVER_NOT_FOUND", "Name server not found"),
    -136: ("NAME_RESOLUTION_NOT_ENABLED", "Name resolution not enabled"),
    -137: ("NAME_SERVER_FORMAT_ERROR", "Server format error (bug!)"),
    -138: ("NAME_SERVER_NO_SUCH_NAME", "No such name"),
    -139: ("NAME_SERVER_NO_ADDRESSES", "No addresses available"),
    -140: ("NAME_SERVER_NEXT_SERVER", "Retry with new server"),
    -141: ("APP_CONNECT_FILTERED", "Connect was filtered"),
    -142: ("ACL_IN_USE_INBOUND", "Inbound ACL in use"),
    -143: ("ACL_IN_USE_OUTBOUND", "Outbound ACL in use"),
    -144: ("INIT_FAILED", "Initialization Failed"),
    -145: ("NETLINK_ERROR", "Netlink error"),
    -146: ("BIER_BSL_UNSUP", "BIER bit-string-length unsupported"),
    -147: ("INSTANCE_IN_USE", "Instance in use"),
    -148: ("INVALID_SESSION_ID", "Session ID out of range"),
    -149: ("ACL_IN_USE_BY_LOOKUP_CONTEXT", "ACL in use by a lookup context"),
    -150: ("INVALID_VALUE_3", "Invalid value #3"),
    -151: ("NON_ETHERNET", "Interface is not an Ethernet interface"),
    -152: ("BD_ALREADY_HAS_BVI", "Bridge domain already has a BVI interface"),
    -153: ("INVALID_PROTOCOL", "Invalid Protocol"),
    -154: ("INVALID_ALGORITHM", "Invalid Algorithm"),
    -155: ("RSRC_IN_USE", "Resource In Use"),
    -156: ("KEY_LENGTH", "invalid Key Length"),
    -157: ("FIB_PATH_UNSUPPORTED_NH_PROTO", "Unsupported FIB Path protocol"),
    -159: ("API_ENDIAN_FAILED", "Endian mismatch detected"),
    -160: ("NO_CHANGE", "No change in table"),
    -161: ("MISSING_CERT_KEY", "Missing certifcate or key"),
    -162: ("LIMIT_EXCEEDED", "limit exceeded"),
    -163: ("IKE_NO_PORT", "port not managed by IKE"),
    -164: ("UDP_PORT_TAKEN", "UDP port already taken"),
    -165: ("EAGAIN", "Retry stream call with cursor"),
    -166: ("INVALID_VALUE_4", "Invalid value #4"),
    -167: ("BUSY", "Busy"),
    -168: ("BUG", "Bug"),
    -169: ("FEATURE_ALREADY_DISABLED", "Feature already disabled"),
    -170: ("FEATURE_ALREADY_ENABLED", "Feature already enabled"),
    -171: ("INVALID_PREFIX_LENGTH", "Invalid prefix length"),
}

#: retval -> name, e.g. -2 -> "INVALID_SW_IF_INDEX"
RETVAL_NAMES: dict[int, str] = {v: n for v, (n, _t) in _TABLE.items()}
#: retval -> VPP's description text
RETVAL_TEXT: dict[int, str] = {v: t for v, (_n, t) in _TABLE.items()}
_BY_NAME = {n: v for v, n in RETVAL_NAMES.items()}

# The retvals code names (the simulator's handlers, the plugins): a misspelt name fails
# at import, where a literal number would silently mean something else.
OK = 0
INVALID_SW_IF_INDEX = _BY_NAME["INVALID_SW_IF_INDEX"]
NO_SUCH_FIB = _BY_NAME["NO_SUCH_FIB"]
NO_SUCH_ENTRY = _BY_NAME["NO_SUCH_ENTRY"]
INVALID_VALUE = _BY_NAME["INVALID_VALUE"]
FEATURE_DISABLED = _BY_NAME["FEATURE_DISABLED"]
INVALID_REGISTRATION = _BY_NAME["INVALID_REGISTRATION"]
NO_PATHS_IN_ROUTE = _BY_NAME["NO_PATHS_IN_ROUTE"]
NO_MATCHING_INTERFACE = _BY_NAME["NO_MATCHING_INTERFACE"]
ADDRESS_NOT_FOUND_FOR_INTERFACE = _BY_NAME["ADDRESS_NOT_FOUND_FOR_INTERFACE"]
SUBIF_ALREADY_EXISTS = _BY_NAME["SUBIF_ALREADY_EXISTS"]
INVALID_INTERFACE = _BY_NAME["INVALID_INTERFACE"]
INVALID_ARGUMENT = _BY_NAME["INVALID_ARGUMENT"]
UNEXPECTED_INTF_STATE = _BY_NAME["UNEXPECTED_INTF_STATE"]
ADDRESS_IN_USE = _BY_NAME["ADDRESS_IN_USE"]
ADDRESS_FOUND_FOR_INTERFACE = _BY_NAME["ADDRESS_FOUND_FOR_INTERFACE"]
ENTRY_ALREADY_EXISTS = _BY_NAME["ENTRY_ALREADY_EXISTS"]
BD_ALREADY_EXISTS = _BY_NAME["BD_ALREADY_EXISTS"]
BD_IN_USE = _BY_NAME["BD_IN_USE"]
BD_NOT_MODIFIABLE = _BY_NAME["BD_NOT_MODIFIABLE"]
BD_ID_EXCEED_MAX = _BY_NAME["BD_ID_EXCEED_MAX"]
UNSUPPORTED = _BY_NAME["UNSUPPORTED"]
NON_ETHERNET = _BY_NAME["NON_ETHERNET"]
BD_ALREADY_HAS_BVI = _BY_NAME["BD_ALREADY_HAS_BVI"]
RSRC_IN_USE = _BY_NAME["RSRC_IN_USE"]
INVALID_PREFIX_LENGTH = _BY_NAME["INVALID_PREFIX_LENGTH"]

Outcome = Literal["ok", "benign", "retry", "fail"]

# Transient: the same call may succeed later (resources busy or full, ordering with other
# objects, host-side syscalls and netlink). Everything not listed here or below is permanent.
_RETRY = frozenset(
    _BY_NAME[n]
    for n in (
        "UNSPECIFIED",
        "INVALID_SW_IF_INDEX",  # on create/update: the interface may not exist *yet*
        "NO_MATCHING_INTERFACE",  # a route path's interface: it too may not exist yet
        "NO_SUCH_FIB",  # the VRF table is created by another item
        "SYSCALL_ERROR_1",
        "SYSCALL_ERROR_2",
        "SYSCALL_ERROR_3",
        "SYSCALL_ERROR_4",
        "SYSCALL_ERROR_5",
        "SYSCALL_ERROR_6",
        "SYSCALL_ERROR_7",
        "SYSCALL_ERROR_8",
        "SYSCALL_ERROR_9",
        "SYSCALL_ERROR_10",
        "RESPONSE_NOT_READY",
        "NOT_CONNECTED",
        "TABLE_TOO_BIG",
        "BFD_EINUSE",
        "ADDRESS_IN_USE",  # also "same prefix again": callers that can tell check a dump
        "QUEUE_FULL",
        "BFD_EAGAIN",
        "ADDRESS_FOUND_FOR_INTERFACE",  # set_table before the addresses were removed
        "SVM_SEGMENT_CREATE_FAIL",
        "BD_IN_USE",
        "ACL_IN_USE_INBOUND",
        "ACL_IN_USE_OUTBOUND",
        "INIT_FAILED",
        "NETLINK_ERROR",
        "INSTANCE_IN_USE",
        "ACL_IN_USE_BY_LOOKUP_CONTEXT",
        "BD_ALREADY_HAS_BVI",  # another BVI still attached: clears when it goes
        "RSRC_IN_USE",
        "LIMIT_EXCEEDED",
        "EAGAIN",
        "BUSY",
    )
)

# "Already exists" on create, and "no change" anywhere, mean the wanted state is there.
_EXISTS = frozenset(
    _BY_NAME[n]
    for n in (
        "VLAN_ALREADY_EXISTS",
        "SUBIF_ALREADY_EXISTS",
        "TUNNEL_EXIST",
        "IF_ALREADY_EXISTS",
        "VALUE_EXIST",
        "ALREADY_CONNECTED",
        "BFD_EEXIST",
        "ENTRY_ALREADY_EXISTS",
        "BD_ALREADY_EXISTS",
        "APP_ALREADY_ATTACHED",
        "FEATURE_ALREADY_ENABLED",
    )
)
# "Not found" on delete: the object is already gone.
_MISSING = frozenset(
    _BY_NAME[n]
    for n in (
        "INVALID_SW_IF_INDEX",
        "NO_SUCH_FIB",
        "NO_SUCH_LABEL",
        "NO_SUCH_ENTRY",
        "INVALID_SW_IF_INDEX_2",
        "ADDRESS_NOT_FOUND_FOR_INTERFACE",
        "NO_SUCH_TABLE",
        "NO_SUCH_TABLE2",
        "NO_SUCH_TABLE3",
        "CLASSIFY_TABLE_NOT_FOUND",
        "BFD_ENOENT",
        "ADDRESS_NOT_IN_USE",
        "SUBIF_DOESNT_EXIST",
        "FEATURE_ALREADY_DISABLED",
    )
)
_NO_CHANGE = _BY_NAME["NO_CHANGE"]

_CREATE_OPS = frozenset({"create", "add", "put"})
_DELETE_OPS = frozenset({"delete", "del", "remove"})


def retval_name(retval: int) -> str:
    """The name of a retval (``"OK"`` for 0, ``"UNKNOWN(-999)"`` for values VPP does not list)."""
    if retval == 0:
        return "OK"
    return RETVAL_NAMES.get(retval, f"UNKNOWN({retval})")


def classify(retval: int, op: str = "update") -> Outcome:
    """What a retval means for an operation ``op`` ("create", "update", "delete", ...).

    ``"ok"``: success. ``"benign"``: an error that leaves the wanted state in place
    (already exists on create, not found on delete, no change). ``"retry"``: transient,
    retry with backoff. ``"fail"``: permanent until the desired value changes.
    """
    if retval >= 0:
        return "ok"
    if retval == _NO_CHANGE:
        return "benign"
    if op in _CREATE_OPS and retval in _EXISTS:
        return "benign"
    if op in _DELETE_OPS and retval in _MISSING:
        return "benign"
    if retval in _RETRY or retval not in RETVAL_NAMES:
        # unknown values come from newer VPPs: retrying is the cautious choice
        return "retry"
    return "fail"


def retval_by_name(name: str) -> int:
    """The value of VPP's retval ``name`` (``"OK"`` is 0); a name VPP does not define is a
    ``KeyError`` naming it."""
    if name == "OK":
        return 0
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a VPP retval name") from None


def __getattr__(name: str) -> Any:
    # VppApiError lives in datasync.vpp.errors (which imports this module); its old path
    if name == "VppApiError":
        from .errors import VppApiError

        return VppApiError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
