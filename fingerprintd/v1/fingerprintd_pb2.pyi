from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MailClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MAIL_CLASS_UNSPECIFIED: _ClassVar[MailClass]
    MAIL_CLASS_SERVER: _ClassVar[MailClass]
    MAIL_CLASS_DESKTOP: _ClassVar[MailClass]
    MAIL_CLASS_MOBILE: _ClassVar[MailClass]
    MAIL_CLASS_EMBEDDED: _ClassVar[MailClass]
    MAIL_CLASS_SCANNER: _ClassVar[MailClass]
    MAIL_CLASS_UNKNOWN: _ClassVar[MailClass]
MAIL_CLASS_UNSPECIFIED: MailClass
MAIL_CLASS_SERVER: MailClass
MAIL_CLASS_DESKTOP: MailClass
MAIL_CLASS_MOBILE: MailClass
MAIL_CLASS_EMBEDDED: MailClass
MAIL_CLASS_SCANNER: MailClass
MAIL_CLASS_UNKNOWN: MailClass

class LookupRequest(_message.Message):
    __slots__ = ("ip", "port", "wait_ms", "context")
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ip: str
    port: int
    wait_ms: int
    context: Context
    def __init__(self, ip: _Optional[str] = ..., port: _Optional[int] = ..., wait_ms: _Optional[int] = ..., context: _Optional[_Union[Context, _Mapping]] = ...) -> None: ...

class Context(_message.Message):
    __slots__ = ("client_name", "reverse_name", "helo_name")
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    REVERSE_NAME_FIELD_NUMBER: _ClassVar[int]
    HELO_NAME_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    reverse_name: str
    helo_name: str
    def __init__(self, client_name: _Optional[str] = ..., reverse_name: _Optional[str] = ..., helo_name: _Optional[str] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("found", "observation", "host", "verdict")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    found: bool
    observation: Observation
    host: Host
    verdict: Verdict
    def __init__(self, found: _Optional[bool] = ..., observation: _Optional[_Union[Observation, _Mapping]] = ..., host: _Optional[_Union[Host, _Mapping]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ...) -> None: ...

class LookupBatchRequest(_message.Message):
    __slots__ = ("queries",)
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[LookupRequest]
    def __init__(self, queries: _Optional[_Iterable[_Union[LookupRequest, _Mapping]]] = ...) -> None: ...

class LookupBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[LookupResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[LookupResponse, _Mapping]]] = ...) -> None: ...

class Observation(_message.Message):
    __slots__ = ("client_ip", "client_port", "server_ip", "server_port", "time", "matched", "os_class", "os_name", "os_flavor", "label", "generic", "fuzzy", "tool", "distance", "raw_sig", "link", "mtu", "ip_version", "ttl", "params", "mail_class", "nat", "nat_reasons", "uptime_minutes", "uptime_modulo_days")
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    CLIENT_PORT_FIELD_NUMBER: _ClassVar[int]
    SERVER_IP_FIELD_NUMBER: _ClassVar[int]
    SERVER_PORT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    OS_CLASS_FIELD_NUMBER: _ClassVar[int]
    OS_NAME_FIELD_NUMBER: _ClassVar[int]
    OS_FLAVOR_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    GENERIC_FIELD_NUMBER: _ClassVar[int]
    FUZZY_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    RAW_SIG_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    IP_VERSION_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MAIL_CLASS_FIELD_NUMBER: _ClassVar[int]
    NAT_FIELD_NUMBER: _ClassVar[int]
    NAT_REASONS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MINUTES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MODULO_DAYS_FIELD_NUMBER: _ClassVar[int]
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    time: float
    matched: bool
    os_class: str
    os_name: str
    os_flavor: str
    label: str
    generic: bool
    fuzzy: bool
    tool: bool
    distance: int
    raw_sig: str
    link: str
    mtu: int
    ip_version: int
    ttl: int
    params: str
    mail_class: MailClass
    nat: str
    nat_reasons: _containers.RepeatedScalarFieldContainer[str]
    uptime_minutes: int
    uptime_modulo_days: int
    def __init__(self, client_ip: _Optional[str] = ..., client_port: _Optional[int] = ..., server_ip: _Optional[str] = ..., server_port: _Optional[int] = ..., time: _Optional[float] = ..., matched: _Optional[bool] = ..., os_class: _Optional[str] = ..., os_name: _Optional[str] = ..., os_flavor: _Optional[str] = ..., label: _Optional[str] = ..., generic: _Optional[bool] = ..., fuzzy: _Optional[bool] = ..., tool: _Optional[bool] = ..., distance: _Optional[int] = ..., raw_sig: _Optional[str] = ..., link: _Optional[str] = ..., mtu: _Optional[int] = ..., ip_version: _Optional[int] = ..., ttl: _Optional[int] = ..., params: _Optional[str] = ..., mail_class: _Optional[_Union[MailClass, str]] = ..., nat: _Optional[str] = ..., nat_reasons: _Optional[_Iterable[str]] = ..., uptime_minutes: _Optional[int] = ..., uptime_modulo_days: _Optional[int] = ...) -> None: ...

class Host(_message.Message):
    __slots__ = ("first_seen", "last_seen", "seen_count", "host_changed", "last_change", "distinct_signatures", "last_distance", "os_names", "last_ip_sharing", "last_host_change", "uptime_minutes", "uptime_modulo_days")
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    SEEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    HOST_CHANGED_FIELD_NUMBER: _ClassVar[int]
    LAST_CHANGE_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    LAST_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    OS_NAMES_FIELD_NUMBER: _ClassVar[int]
    LAST_IP_SHARING_FIELD_NUMBER: _ClassVar[int]
    LAST_HOST_CHANGE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MINUTES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MODULO_DAYS_FIELD_NUMBER: _ClassVar[int]
    first_seen: float
    last_seen: float
    seen_count: int
    host_changed: bool
    last_change: float
    distinct_signatures: int
    last_distance: int
    os_names: _containers.RepeatedScalarFieldContainer[str]
    last_ip_sharing: float
    last_host_change: float
    uptime_minutes: int
    uptime_modulo_days: int
    def __init__(self, first_seen: _Optional[float] = ..., last_seen: _Optional[float] = ..., seen_count: _Optional[int] = ..., host_changed: _Optional[bool] = ..., last_change: _Optional[float] = ..., distinct_signatures: _Optional[int] = ..., last_distance: _Optional[int] = ..., os_names: _Optional[_Iterable[str]] = ..., last_ip_sharing: _Optional[float] = ..., last_host_change: _Optional[float] = ..., uptime_minutes: _Optional[int] = ..., uptime_modulo_days: _Optional[int] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("score", "action", "rules", "header", "trusted", "mail_class", "reply", "id", "learned", "bucket")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_FIELD_NUMBER: _ClassVar[int]
    MAIL_CLASS_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LEARNED_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    score: float
    action: str
    rules: _containers.RepeatedScalarFieldContainer[str]
    header: str
    trusted: bool
    mail_class: MailClass
    reply: str
    id: str
    learned: float
    bucket: str
    def __init__(self, score: _Optional[float] = ..., action: _Optional[str] = ..., rules: _Optional[_Iterable[str]] = ..., header: _Optional[str] = ..., trusted: _Optional[bool] = ..., mail_class: _Optional[_Union[MailClass, str]] = ..., reply: _Optional[str] = ..., id: _Optional[str] = ..., learned: _Optional[float] = ..., bucket: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("id", "spam", "client_ip", "message_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPAM_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    spam: bool
    client_ip: str
    message_id: str
    def __init__(self, id: _Optional[str] = ..., spam: _Optional[bool] = ..., client_ip: _Optional[str] = ..., message_id: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("result", "adjustment", "why")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ADJUSTMENT_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    result: str
    adjustment: float
    why: str
    def __init__(self, result: _Optional[str] = ..., adjustment: _Optional[float] = ..., why: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("unknown_only", "os_name_regex", "ports", "mail_classes")
    UNKNOWN_ONLY_FIELD_NUMBER: _ClassVar[int]
    OS_NAME_REGEX_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    MAIL_CLASSES_FIELD_NUMBER: _ClassVar[int]
    unknown_only: bool
    os_name_regex: str
    ports: _containers.RepeatedScalarFieldContainer[int]
    mail_classes: _containers.RepeatedScalarFieldContainer[MailClass]
    def __init__(self, unknown_only: _Optional[bool] = ..., os_name_regex: _Optional[str] = ..., ports: _Optional[_Iterable[int]] = ..., mail_classes: _Optional[_Iterable[_Union[MailClass, str]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("packets", "fingerprinted", "skipped", "kernel_received", "kernel_dropped", "interface_dropped", "connections", "hosts", "match_cache_hits", "match_cache_misses", "lookups", "lookup_hits", "uptime_seconds", "reloads", "syn_mail_classes")
    class SkippedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class SynMailClassesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINTED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    KERNEL_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    KERNEL_DROPPED_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_DROPPED_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    MATCH_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    MATCH_CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_HITS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RELOADS_FIELD_NUMBER: _ClassVar[int]
    SYN_MAIL_CLASSES_FIELD_NUMBER: _ClassVar[int]
    packets: int
    fingerprinted: int
    skipped: _containers.ScalarMap[str, int]
    kernel_received: int
    kernel_dropped: int
    interface_dropped: int
    connections: int
    hosts: int
    match_cache_hits: int
    match_cache_misses: int
    lookups: int
    lookup_hits: int
    uptime_seconds: float
    reloads: int
    syn_mail_classes: _containers.ScalarMap[str, int]
    def __init__(self, packets: _Optional[int] = ..., fingerprinted: _Optional[int] = ..., skipped: _Optional[_Mapping[str, int]] = ..., kernel_received: _Optional[int] = ..., kernel_dropped: _Optional[int] = ..., interface_dropped: _Optional[int] = ..., connections: _Optional[int] = ..., hosts: _Optional[int] = ..., match_cache_hits: _Optional[int] = ..., match_cache_misses: _Optional[int] = ..., lookups: _Optional[int] = ..., lookup_hits: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., reloads: _Optional[int] = ..., syn_mail_classes: _Optional[_Mapping[str, int]] = ...) -> None: ...
