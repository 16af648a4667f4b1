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
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=fuzz/corpus
mkdir -p "$corpus"/{datagram,stream,edit_round_trip,uri}
rm -f "$corpus"/*/rfc* "$corpus"/*/seed-*  # regression-* seeds stay

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
for d in "$corpus"/*/; do
    echo "$d: $(find "$d" -type f ! -name '[0-9a-f]*' | wc -l) named seeds"
done
