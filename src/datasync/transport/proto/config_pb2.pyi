from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_STATE_UNSPECIFIED: _ClassVar[KeyState]
    CONFIGURED: _ClassVar[KeyState]
    PENDING: _ClassVar[KeyState]
    INVALID: _ClassVar[KeyState]
    FAILED: _ClassVar[KeyState]
    RETRYING: _ClassVar[KeyState]
    STALE: _ClassVar[KeyState]
    DELETED: _ClassVar[KeyState]
KEY_STATE_UNSPECIFIED: KeyState
CONFIGURED: KeyState
PENDING: KeyState
INVALID: KeyState
FAILED: KeyState
RETRYING: KeyState
STALE: KeyState
DELETED: KeyState

class KeyValue(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class KeyResult(_message.Message):
    __slots__ = ("key", "state", "reason")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    key: str
    state: KeyState
    reason: str
    def __init__(self, key: _Optional[str] = ..., state: _Optional[_Union[KeyState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class SetConfigRequest(_message.Message):
    __slots__ = ("updates", "deletes", "overwrite_all", "request_id", "wait", "wait_seconds", "generation")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    DELETES_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_ALL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[KeyValue]
    deletes: _containers.RepeatedScalarFieldContainer[str]
    overwrite_all: bool
    request_id: str
    wait: bool
    wait_seconds: float
    generation: int
    def __init__(self, updates: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., deletes: _Optional[_Iterable[str]] = ..., overwrite_all: _Optional[bool] = ..., request_id: _Optional[str] = ..., wait: _Optional[bool] = ..., wait_seconds: _Optional[float] = ..., generation: _Optional[int] = ...) -> None: ...

class SetConfigReply(_message.Message):
    __slots__ = ("revision", "results", "complete", "duplicate")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    revision: int
    results: _containers.RepeatedCompositeFieldContainer[KeyResult]
    complete: bool
    duplicate: bool
    def __init__(self, revision: _Optional[int] = ..., results: _Optional[_Iterable[_Union[KeyResult, _Mapping]]] = ..., complete: _Optional[bool] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class GetConfigReply(_message.Message):
    __slots__ = ("revision", "kvs")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KVS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    kvs: _containers.RepeatedCompositeFieldContainer[KeyValue]
    def __init__(self, revision: _Optional[int] = ..., kvs: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("in_sync", "state", "json")
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    in_sync: bool
    state: str
    json: str
    def __init__(self, in_sync: _Optional[bool] = ..., state: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class KeyStateEvent(_message.Message):
    __slots__ = ("key", "state", "reason", "removed", "resynced")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    RESYNCED_FIELD_NUMBER: _ClassVar[int]
    key: str
    state: KeyState
    reason: str
    removed: bool
    resynced: bool
    def __init__(self, key: _Optional[str] = ..., state: _Optional[_Union[KeyState, str]] = ..., reason: _Optional[str] = ..., removed: _Optional[bool] = ..., resynced: _Optional[bool] = ...) -> None: ...
