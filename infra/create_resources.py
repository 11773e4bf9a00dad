"""Creates, in a running moto server, the resources template.yaml declares, under the
physical names the functions use locally. Idempotent: existing resources are kept and their
settings brought back to these values.

Usage: python infra/create_resources.py ENDPOINT_URL
(AWS_REGION defaults to us-east-1; the credentials are moto's dummies.)

Keep the names and settings in step with template.yaml (NamePrefix default: turbobackend).
"""

import json
import os
import sys

import boto3
from botocore.exceptions import ClientError

TABLE = "turbobackend-requests"
BUCKET = "turbobackend-projects"
MAX_RECEIVE_COUNT = 5
MAIN_RETENTION = 4 * 24 * 3600
DLQ_RETENTION = 14 * 24 * 3600
# name -> (visibility timeout = 6 x the consuming function's timeout, dead-letter queue)
QUEUES = {
    "turbobackend-work": (6 * 300, "turbobackend-work-dlq"),
    "turbobackend-finalize": (6 * 900, "turbobackend-finalize-dlq"),
}


# The global secondary indexes (name -> partition key; all sort on created_at_ms and project
# every attribute), as shared/aws/src/layout.rs documents them.
INDEXES = {"by_owner": "owner", "by_project": "project", "active": "active_owner"}
ATTRIBUTES = [
    {"AttributeName": "pk", "AttributeType": "S"},
    {"AttributeName": "sk", "AttributeType": "S"},
    {"AttributeName": "owner", "AttributeType": "S"},
    {"AttributeName": "project", "AttributeType": "S"},
    {"AttributeName": "active_owner", "AttributeType": "S"},
    {"AttributeName": "created_at_ms", "AttributeType": "N"},
]


def index_spec(name, partition):
    return {
        "IndexName": name,
        "KeySchema": [
            {"AttributeName": partition, "KeyType": "HASH"},
            {"AttributeName": "created_at_ms", "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "ALL"},
    }


def ensure_table(dynamodb):
    try:
        table = dynamodb.describe_table(TableName=TABLE)["Table"]
    except dynamodb.exceptions.ResourceNotFoundException:
        dynamodb.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=ATTRIBUTES,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            GlobalSecondaryIndexes=[index_spec(n, p) for n, p in INDEXES.items()],
        )
        dynamodb.get_waiter("table_exists").wait(TableName=TABLE)
        table = dynamodb.describe_table(TableName=TABLE)["Table"]
    # A table made before the indexes existed gets them (DynamoDB adds one GSI per update).
    present = {i["IndexName"] for i in table.get("GlobalSecondaryIndexes", [])}
    for name, partition in INDEXES.items():
        if name not in present:
            dynamodb.update_table(
                TableName=TABLE,
                AttributeDefinitions=ATTRIBUTES,
                GlobalSecondaryIndexUpdates=[{"Create": index_spec(name, partition)}],
            )
    ttl = dynamodb.describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") != "ENABLED":
        dynamodb.update_time_to_live(
            TableName=TABLE, TimeToLiveSpecification={"AttributeName": "ttl", "Enabled": True}
        )


def ensure_queue(sqs, name, attributes):
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


def ensure_queues(sqs):
    urls = {}
    for name, (visibility, dlq) in QUEUES.items():
        dlq_url = ensure_queue(sqs, dlq, {"MessageRetentionPeriod": str(DLQ_RETENTION)})
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}
        urls[name] = ensure_queue(
            sqs,
            name,
            {
                "VisibilityTimeout": str(visibility),
                "MessageRetentionPeriod": str(MAIN_RETENTION),
                "RedrivePolicy": json.dumps(redrive),
            },
        )
        urls[dlq] = dlq_url
    return urls


def ensure_bucket(s3):
    try:
        s3.head_bucket(Bucket=BUCKET)
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
            raise
        s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_public_access_block(
        Bucket=BUCKET,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )


def main(endpoint):
    session = boto3.session.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
    )
    ensure_table(session.client("dynamodb", endpoint_url=endpoint))
    urls = ensure_queues(session.client("sqs", endpoint_url=endpoint))
    ensure_bucket(session.client("s3", endpoint_url=endpoint))
    print(f"moto: table {TABLE}, bucket {BUCKET}, queues {', '.join(sorted(urls))}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
