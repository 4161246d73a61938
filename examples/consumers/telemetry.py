#!/usr/bin/env python3
"""Follow Verge telemetry on MQTT: one line per message with the host's CPU,
memory and disk, and a warning for every gap in a node's `seq` (messages the
agent's outbox dropped, see docs/consumers.md).

    pip install paho-mqtt
    python3 examples/consumers/telemetry.py --host 127.0.0.1 --port 7883

With TLS (a consumer certificate from the controller's CA), add
--ca-file ca.pem --cert consumer.pem --key consumer.key.
"""

import argparse
import json
import ssl
import sys

import paho.mqtt.client as mqtt

PREFIX = "verge/v1"
SCHEMA_VERSION = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7883)
    parser.add_argument("--ca-file")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after this many messages (0: never)")
    args = parser.parse_args()

    last_seq = {}
    seen = 0

    def on_connect(client, _userdata, _flags, reason, _properties):
        if reason.is_failure:
            sys.exit(f"the broker refused the connection: {reason}")
        # + matches one level: every region, every node.
        client.subscribe(f"{PREFIX}/telemetry/+/+", qos=1)

    def on_message(client, _userdata, message):
        nonlocal seen
        try:
            sample = json.loads(message.payload)
        except ValueError as e:
            print(f"{message.topic}: not JSON ({e})", file=sys.stderr)
            return
        if sample.get("schema_version") != SCHEMA_VERSION:
            print(f"{message.topic}: schema_version {sample.get('schema_version')}, "
                  f"this script reads {SCHEMA_VERSION}", file=sys.stderr)
            return
        node, seq = sample["agent"], sample["seq"]
        previous = last_seq.get(node)
        if previous is not None and seq <= previous:
            return  # a duplicate: QoS 1 delivers at least once
        if previous is not None and seq > previous + 1:
            print(f"{node}: {seq - previous - 1} message(s) lost before seq {seq} "
                  f"(outbox dropped {sample['outbox']['dropped']} in all)")
        last_seq[node] = seq
        host = sample["host"]
        cpu = host.get("cpu_percent")
        print(f"{sample['at']} {node} ({sample['region']}) seq {seq}: "
              f"CPU {'-' if cpu is None else f'{cpu:.1f} %'}, "
              f"memory {host['memory_available_bytes'] / 2**20:.0f} of "
              f"{host['memory_total_bytes'] / 2**20:.0f} MiB free, "
              f"disk {host['disk_free_bytes'] / 2**30:.1f} GiB free, "
              f"{len(sample['workloads'])} workload(s)", flush=True)
        seen += 1
        if args.count and seen >= args.count:
            client.disconnect()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="",
                         protocol=mqtt.MQTTv311)
    if args.ca_file:
        client.tls_set(ca_certs=args.ca_file, certfile=args.cert, keyfile=args.key,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(args.host, args.port, keepalive=30)
    client.loop_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
