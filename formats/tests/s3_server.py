"""An S3-compatible server for the object-storage tests: moto's server, a real S3 protocol
endpoint over HTTP, on 127.0.0.1 at a free port.

Creates the buckets named on the command line, prints the endpoint URL as its first line, and
serves until its standard input closes (the test process that started it has ended).

Usage: python s3_server.py BUCKET...
"""

import sys

import boto3
from moto.server import ThreadedMotoServer


def main(buckets):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    for bucket in buckets:
        client.create_bucket(Bucket=bucket)
    print(endpoint, flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
