#!/usr/bin/env bash
# Rebuilds the named seeds of fuzz/corpus/<target>/ from the fixtures in sip-traces/.
# Seeds are named after their source (rfc4475-wsinv.dat, rfc3665-call-01-invite.sip,
# seed-blf-..., seed-uri-...): never starting with a hex digit, so .gitignore keeps them and drops
# libFuzzer's hash-named finds. Regression seeds (regression-*) are left alone.
#
# Layouts (see src/fuzzing.rs):
#   datagram/         the message as is
#   stream/           one control byte (chunking; top bit = small limits, left clear
#                     here) + the message;
#                     seed-flow-* are whole call flows with keep-alives in between
#   edit_round_trip/  two bytes of edit flags (little endian) + one argument byte + message
#   uri/              a URI: every request's Request-URI, plus hand-made ones
#   observe/          one seed per sip-traces/observe/*.trace: records of
#                     [control][advance][length u16 LE][message] (see below)
#   blf_dialog_info/  the body of every sip-traces/blf/*.sip NOTIFY (seed-blf-*) and
#                     every bare sip-traces/rfc4235/*.xml document (rfc4235-*)
# proxy_core/ seeds are hand-made and not touched here.
set -euo pipefail
export LC_ALL=C  # lengths in bytes
cd "$(dirname "$0")/.."
corpus=fuzz/corpus
targets=(datagram stream edit_round_trip uri observe blf_dialog_info)
for t in "${targets[@]}"; do
    mkdir -p "$corpus/$t"
    rm -f "$corpus/$t"/rfc* "$corpus/$t"/seed-*  # regression-* seeds stay
done

byte() { printf "\\x$(printf '%02x' "$1")"; }

i=0
flags=(0x3ff 0x1ff 0x155 0x2aa 0x0f0 0x30f 0x001 0x102)
while IFS= read -r f; do
    name="$(basename "$(dirname "$f")")-$(basename "$f")"
    case "$name" in [0-9a-f]*) name="seed-$name" ;; esac
    cp "$f" "$corpus/datagram/$name"
    { byte $(( (i * 29 + 5) % 128 )); cat "$f"; } >"$corpus/stream/$name"
    fl=${flags[$(( i % ${#flags[@]} ))]}
    { byte $(( fl & 0xff )); byte $(( fl >> 8 )); byte $(( (i * 7 + 3) % 256 )); cat "$f"; } \
        >"$corpus/edit_round_trip/$name"
    first=$(head -n 1 "$f" | tr -d '\r')
    case "$first" in
        SIP/*) ;;
        *" "*" "*) printf '%s' "$(cut -d ' ' -f 2 <<<"$first")" >"$corpus/uri/$name-ruri" ;;
    esac
    i=$((i + 1))
done < <(find sip-traces -name '*.dat' -o -name '*.sip' | LC_ALL=C sort)

# call flows as one stream, with a ping (CRLFCRLF) and a pong (CRLF) between messages
for flow in call noanswer busy reg; do
    {
        byte 7
        for f in sip-traces/rfc3665/"$flow"-*.sip; do
            cat "$f"
            printf '\r\n\r\n\r\n'
        done
    } >"$corpus/stream/seed-flow-$flow"
done

uris=(
    'sip:alice@example.com'
    'sips:alice:secret@[2001:db8::1]:5061;transport=tls;lr?subject=hi&priority=urgent'
    'sip:%2A78@pbx.example.com;user=phone'
    'sip:*98#@pbx.example.com'
    'sip:192.0.2.1:5060;maddr=239.255.255.1;ttl=15;lr'
    'sip:user;par=u%40example.net@example.com'
    'tel:+1-201-555-0123;phone-context=example.com'
    'tel:7042;phone-context=example.com;ext=22'
    'im:alice@example.com'
    'soap.beep://192.0.2.103:3002'
    'SIP:Bob@Example.COM:05060;Transport=UDP'
    'sip:[::1]'
)
n=0
for u in "${uris[@]}"; do
    printf '%s' "$u" >"$corpus/uri/seed-uri-$n"
    n=$((n + 1))
done
# observe/: each trace as the records `fuzzing::observe` reads. Control byte: bit 0 set
# for pbx -> phone, bits 1-2 the phone (desk-201, soft-201, desk-202, desk-203 by their
# addresses; another address takes the slot of its declaration order). Messages go
# LF -> CRLF with Content-Length recomputed as tests/observe_traces.rs does. Times are
# rounded down to the target's 10 s clock units; `--- tick` becomes a record without a
# message, and a gap longer than 255 units is split over such records.
le16() { byte $(( $1 & 0xff )); byte $(( $1 >> 8 )); }

# The message lines in msg[] on the wire: CRLF line ends, Content-Length = body length.
wire() {
    local -a head=() body=()
    local in_body=0 line b=""
    for line in ${msg[@]+"${msg[@]}"}; do
        if (( in_body )); then
            body+=("$line")
        elif [[ -z $line ]]; then
            in_body=1
        else
            head+=("$line")
        fi
    done
    while (( ${#body[@]} )) && [[ -z ${body[-1]//[[:space:]]/} ]]; do
        unset 'body[-1]'
    done
    for line in ${body[@]+"${body[@]}"}; do
        b+="$line"$'\r\n'
    done
    for line in ${head[@]+"${head[@]}"}; do
        case "${line,,}" in
            content-length:* | l:*) printf 'Content-Length: %d\r\n' "${#b}" ;;
            *) printf '%s\r\n' "$line" ;;
        esac
    done
    printf '\r\n%s' "$b"
}

# Seconds with 3 decimals (`12.345`) -> whole 10 s units.
units() {
    local s=${1%%.*} f=000
    [[ $1 == *.* ]] && f="${1#*.}000"
    echo $(( (10#$s * 1000 + 10#${f:0:3}) / 10000 ))
}

# Writes the step read so far (step = tick, or the control byte of a message).
flush() {
    [[ -n $step ]] || return 0
    local target adv len
    target=$(units "$at")
    adv=$(( target - clock ))
    clock=$target
    while (( adv > 255 )); do
        byte 0; byte 255; le16 0
        adv=$(( adv - 255 ))
    done
    if [[ $step == tick ]]; then
        (( adv == 0 )) || { byte 0; byte "$adv"; le16 0; }
    else
        wire >"$tmp"
        len=$(wc -c <"$tmp")
        (( len <= 0xffff )) || { echo "$trace: message over 65535 bytes" >&2; exit 1; }
        byte "$step"; byte "$adv"; le16 "$len"; cat "$tmp"
    fi
    step=
    msg=()
}

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for trace in sip-traces/observe/*.trace; do
    declare -A slot=()
    declared=0 clock=0 step= at=0
    msg=()
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%$'\r'}
        if [[ $line == "--- "* ]]; then
            flush
            rest=${line#--- }
            if [[ $rest == "tick @"* ]]; then
                step=tick
                at=${rest#tick @}
                continue
            fi
            route=${rest% @*}
            at=${rest##* @}
            from=${route%% -> *}
            to=${route##* -> }
            if [[ $from == pbx ]]; then phone=$to dir=1; else phone=$from dir=0; fi
            [[ -v "slot[$phone]" ]] || { echo "$trace: undeclared phone $phone" >&2; exit 1; }
            step=$(( dir | slot[$phone] << 1 ))
        elif [[ -n $step ]]; then
            [[ $step == tick ]] || msg+=("$line")
        elif [[ $line == "# phone "* ]]; then
            read -r _ _ pname ptransport paddr <<<"$line"
            case "${ptransport,,} $paddr" in
                "udp 10.0.0.11:5060") slot[$pname]=0 ;;
                "tcp 10.0.0.21:40311") slot[$pname]=1 ;;
                "udp 10.0.0.12:5060") slot[$pname]=2 ;;
                "udp 10.0.0.13:5060") slot[$pname]=3 ;;
                *) slot[$pname]=$(( declared % 4 )) ;;
            esac
            declared=$(( declared + 1 ))
        fi
    done <"$trace" >"$corpus/observe/seed-$(basename "$trace" .trace)"
    flush >>"$corpus/observe/seed-$(basename "$trace" .trace)"
    unset slot
done

# blf_dialog_info/: NOTIFY bodies (everything after the blank line ending the header),
# and the bare RFC 4235 documents as they are
for f in sip-traces/blf/*.sip; do
    name=$(basename "$f" .sip)
    sed '1,/^\r$/d' "$f" >"$corpus/blf_dialog_info/seed-blf-${name#notify-}"
done
for f in sip-traces/rfc4235/*.xml; do
    cp "$f" "$corpus/blf_dialog_info/rfc4235-$(basename "$f")"
done

for d in "$corpus"/*/; do
    echo "$d: $(find "$d" -type f ! -name '[0-9a-f]*' | wc -l) named seeds"
done
