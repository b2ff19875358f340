#!/usr/bin/env python3
"""Independent checks of kinesis-edge's Kinesis output, using AWS's own code.

  deagg      stdin: JSON lines {"pk": outer key, "data": base64}; stdout: one JSON line per
             input: {"aggregated": bool, "records": [{"pk", "ehk", "data"}]}, de-aggregated
             with aws_kinesis_agg.deaggregator.iter_deaggregate_records.
  readback   --endpoint URL --stream NAME: every record of every shard read back with boto3
             (ListShards, GetShardIterator TRIM_HORIZON, GetRecords), de-aggregated the same
             way; stdout: {"shards": [...], "records": [...]}.

Explicit hash keys are taken from the package's own protobuf classes with HasField, because
iter_deaggregate_records reports table entry 0 for sub-records that have no explicit hash key.
"""
import argparse
import base64
import json
import sys

# The deaggregator puts the package directory on sys.path, which its generated protobuf
# modules need: import it first.
from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from aws_kinesis_agg import messages_pb2

MAGIC = b"\xf3\x89\x9a\xc2"


def explicit_keys(data):
    """Per sub-record explicit hash key (or None), from the package's protobuf classes."""
    if not data.startswith(MAGIC) or len(data) <= 20:
        return None
    message = messages_pb2.AggregatedRecord()
    try:
        message.ParseFromString(data[4:-16])
    except Exception:  # not an aggregate after all
        return None
    table = list(message.explicit_hash_key_table)
    return [table[r.explicit_hash_key_index] if r.HasField("explicit_hash_key_index") else None
            for r in message.records]


def deaggregate(pk, data, sequence="0", arrival=0):
    boto_record = {"SequenceNumber": sequence, "PartitionKey": pk,
                   "ApproximateArrivalTimestamp": arrival, "Data": data}
    subs = list(iter_deaggregate_records([boto_record], data_format="Boto3"))
    aggregated = bool(subs) and subs[0].get("kinesis", {}).get("aggregated", False)
    out = []
    if aggregated:
        ehks = explicit_keys(data) or [None] * len(subs)
        for sub, ehk in zip(subs, ehks):
            k = sub["kinesis"]
            out.append({"pk": k["partitionKey"], "ehk": ehk, "sub": k["subSequenceNumber"],
                        "data": k["data"].decode("ascii") if isinstance(k["data"], bytes) else k["data"]})
    else:
        for sub in subs:
            k = sub["kinesis"]
            raw = k["data"]
            out.append({"pk": k["partitionKey"], "ehk": None, "sub": None,
                        "data": base64.b64encode(raw).decode("ascii")})
    return aggregated, out


def cmd_deagg():
    for line in sys.stdin:
        if not line.strip():
            continue
        item = json.loads(line)
        aggregated, records = deaggregate(item["pk"], base64.b64decode(item["data"]))
        sys.stdout.write(json.dumps({"aggregated": aggregated, "records": records}) + "\n")
    sys.stdout.flush()


def cmd_readback(endpoint, stream):
    import boto3
    from botocore.config import Config
    client = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                          config=Config(retries={"max_attempts": 1}))
    shards, token = [], None
    while True:
        page = client.list_shards(NextToken=token) if token else client.list_shards(StreamName=stream)
        shards.extend(page["Shards"])
        token = page.get("NextToken")
        if not token:
            break
    out_shards, out_records = [], []
    for shard in shards:
        rng = shard["HashKeyRange"]
        out_shards.append({"id": shard["ShardId"], "start": rng["StartingHashKey"], "end": rng["EndingHashKey"],
                           "open": "EndingSequenceNumber" not in shard["SequenceNumberRange"]})
        iterator = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                             ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        empty = 0
        while iterator and empty < 2:
            page = client.get_records(ShardIterator=iterator, Limit=10000)
            records = page["Records"]
            empty = empty + 1 if not records else 0
            for record in records:
                aggregated, subs = deaggregate(record["PartitionKey"], record["Data"],
                                               record["SequenceNumber"], 0)
                for sub in subs:
                    sub.update({"shard": shard["ShardId"], "seq": record["SequenceNumber"],
                                "aggregated": aggregated})
                    out_records.append(sub)
            iterator = page.get("NextShardIterator")
    json.dump({"shards": out_shards, "records": out_records}, sys.stdout)
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["deagg", "readback"])
    parser.add_argument("--endpoint")
    parser.add_argument("--stream")
    args = parser.parse_args()
    if args.command == "deagg":
        cmd_deagg()
    else:
        cmd_readback(args.endpoint, args.stream)


if __name__ == "__main__":
    main()
