#!/usr/bin/env python3
"""Check what Verge publishes on MQTT against its published schemas: every
message on the subscribed topics is matched to a channel of the AsyncAPI
document and validated against its JSON Schema (signed messages: the
envelope, then the document inside it). Also follows what a consumer cares
about: alarms raised and cleared, telemetry `seq` per node (gaps and
duplicates), and events by kind. Runs until interrupted (SIGINT or SIGTERM),
then prints a JSON summary (and writes it to --summary if given).

    pip install paho-mqtt jsonschema
    python3 examples/consumers/conformance.py --asyncapi docs/asyncapi.json \\
        --host 127.0.0.1 --port 7883

With TLS (a consumer certificate from `verge consumer create`), add
--ca-file ca.pem --cert NAME.pem --key NAME.key; with a user name and
password (an external broker), --username NAME --password-file FILE.
"""

import argparse
import base64
import json
import re
import signal
import ssl
import sys
import threading
from collections import Counter, defaultdict

import paho.mqtt.client as mqtt
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCUMENT_URI = "urn:verge:asyncapi"
# Keep the summary bounded however long it runs.
MAX_EXAMPLES = 20


class Channel:
    """One channel of the AsyncAPI document: its address as a pattern and
    the validators of the messages it may carry."""

    def __init__(self, name, address, messages):
        self.name = name
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(address))
        self.pattern = re.compile(f"^{pattern}$")
        self.messages = messages  # [(name, validator, inner validator or None)]


def load_channels(path):
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    registry = Registry().with_resource(
        DOCUMENT_URI, Resource.from_contents(document, default_specification=DRAFT202012))

    def at(pointer):
        """A validator of the schema at `pointer` inside the document, so
        that its local references resolve against the whole document."""
        return Draft202012Validator({"$ref": f"{DOCUMENT_URI}#{pointer}"}, registry=registry)

    def follow_ref(pointer, node):
        """Follows a message's `$ref` inside the document: its pointer and body."""
        while isinstance(node, dict) and "$ref" in node:
            reference = node["$ref"]
            if not reference.startswith("#/"):
                raise SystemExit(f"{path}: only local references are expected, not {reference}")
            pointer, node = reference[1:], document
            for part in pointer.lstrip("/").split("/"):
                node = node[part]
        return pointer, node

    channels = []
    for name, channel in document["channels"].items():
        messages = []
        for message_name, message in channel.get("messages", {}).items():
            pointer, body = follow_ref(f"/channels/{name}/messages/{message_name}", message)
            signed = "x-verge-signed-payload" in body
            messages.append((
                message_name,
                at(f"{pointer}/payload"),
                at(f"{pointer}/x-verge-signed-payload") if signed else None,
            ))
        channels.append(Channel(name, channel["address"], messages))
    return channels


def first_error(validator, document):
    error = next(iter(validator.iter_errors(document)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(document)"
    return f"{where}: {error.message}"


def check(channel, payload):
    """The name of the message the payload is, or the reasons it is none."""
    reasons = []
    empty = len(payload) == 0
    for name, outer, inner in channel.messages:
        if empty:
            # An empty retained payload removes a retained copy (a cleared
            # alarm); the document says, as an empty string, which channels
            # allow it.
            if outer.is_valid(""):
                return name, None
            reasons.append(f"{name}: an empty payload")
            continue
        try:
            document = json.loads(payload)
        except ValueError as e:
            return None, f"not JSON: {e}"
        problem = first_error(outer, document)
        if problem is None and inner is not None:
            try:
                signed = json.loads(base64.b64decode(document["payload"], validate=True))
            except (ValueError, KeyError) as e:
                problem = f"the envelope's payload is not base64 JSON: {e}"
            else:
                problem = first_error(inner, signed)
                if problem:
                    problem = f"signed document: {problem}"
        if problem is None:
            return name, None
        reasons.append(f"{name}: {problem}")
    return None, "; ".join(reasons)


class Summary:
    def __init__(self):
        self.lock = threading.Lock()
        self.messages = 0
        self.by_channel = Counter()
        self.invalid = 0
        self.invalid_examples = []
        self.unknown_topics = Counter()
        self.alarms_raised = []
        self.alarms_cleared = []
        self.alarms_removed = []
        self.fleet_events = Counter()
        self.node_events = Counter()
        self.telemetry = defaultdict(lambda: {
            "count": 0, "first_seq": None, "last_seq": None,
            "gaps": [], "duplicates": 0, "dropped": 0})

    def to_json(self):
        return {
            "messages": self.messages,
            "by_channel": dict(self.by_channel),
            "invalid": self.invalid,
            "invalid_examples": self.invalid_examples,
            "unknown_topics": dict(self.unknown_topics),
            "alarms": {
                "raised": self.alarms_raised,
                "cleared": self.alarms_cleared,
                "removed": self.alarms_removed,
            },
            "fleet_events": dict(self.fleet_events),
            "node_events": dict(self.node_events),
            "telemetry": dict(self.telemetry),
        }


def follow(summary, channel, topic, payload):
    """What a consumer tracks, from a message already found valid."""
    if not payload:
        if channel.startswith("alarm"):
            summary.alarms_removed.append(topic)
        return
    document = json.loads(payload)
    if channel.startswith("telemetry"):
        node = summary.telemetry[document["agent"]]
        seq = document["seq"]
        node["count"] += 1
        node["dropped"] = document["outbox"]["dropped"]
        if node["last_seq"] is not None:
            if seq <= node["last_seq"]:
                node["duplicates"] += 1
                return
            if seq > node["last_seq"] + 1:
                node["gaps"].append([node["last_seq"], seq])
        else:
            node["first_seq"] = seq
        node["last_seq"] = seq
    elif channel.startswith("alarm"):
        entry = [document["id"], document["entity_instance"], document["instance"]]
        if document["state"] == "raised":
            summary.alarms_raised.append(entry)
        else:
            summary.alarms_cleared.append(entry)
    elif channel.startswith("fleet"):
        summary.fleet_events[document["kind"]] += 1
    elif channel.startswith("event"):
        signed = json.loads(base64.b64decode(document["payload"]))
        kind = signed["kind"]
        if signed.get("alarm"):
            kind = f"{kind}:{signed['alarm']['id']}"
        summary.node_events[kind] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--asyncapi", required=True, help="Verge's AsyncAPI document (JSON)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7883)
    parser.add_argument("--topic", default="verge/v1/#")
    parser.add_argument("--ca-file")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--username")
    parser.add_argument("--password-file")
    parser.add_argument("--summary", help="also write the summary to this file")
    args = parser.parse_args()

    channels = load_channels(args.asyncapi)
    summary = Summary()
    stop = threading.Event()
    subscribed = threading.Event()

    def on_connect(client, _userdata, _flags, reason, _properties):
        if reason.is_failure:
            print(f"the broker refused the connection: {reason}", file=sys.stderr)
            stop.set()
            return
        client.subscribe(args.topic, qos=1)

    def on_subscribe(_client, _userdata, _mid, reasons, _properties):
        if any(r.is_failure for r in reasons):
            print(f"the broker refused the subscription to {args.topic}", file=sys.stderr)
            stop.set()
            return
        # The caller waits for this line before it starts the scenario.
        print("subscribed", flush=True)
        subscribed.set()

    def on_message(_client, _userdata, message):
        with summary.lock:
            summary.messages += 1
            channel = next((c for c in channels if c.pattern.match(message.topic)), None)
            if channel is None:
                summary.unknown_topics[message.topic] += 1
                return
            summary.by_channel[channel.name] += 1
            name, problem = check(channel, message.payload)
            if problem is not None:
                summary.invalid += 1
                if len(summary.invalid_examples) < MAX_EXAMPLES:
                    summary.invalid_examples.append(
                        {"topic": message.topic, "problem": problem[:2000]})
                return
            follow(summary, channel.name, message.topic, message.payload)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="",
                         protocol=mqtt.MQTTv311)
    if args.ca_file:
        client.tls_set(ca_certs=args.ca_file, certfile=args.cert, keyfile=args.key,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if args.username:
        password = None
        if args.password_file:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.read().strip()
        client.username_pw_set(args.username, password)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    with summary.lock:
        text = json.dumps(summary.to_json(), indent=1, sort_keys=True)
    if args.summary:
        with open(args.summary, "w", encoding="utf-8") as f:
            f.write(text)
    print(text, flush=True)
    return 0 if subscribed.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
