//! Native tests: the signer against the `aws-sigv4` crate (AWS's own Rust
//! implementation) as an independent oracle, plus AWS's documented example.

use super::*;
use aws_credential_types::Credentials as AwsCredentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign as aws_sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use std::time::{Duration, UNIX_EPOCH};

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

struct Case {
    method: &'static str,
    scheme: &'static str,
    authority: &'static str,
    path: &'static str,
    query: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static [u8],
    unsigned: bool,
    token: Option<&'static str>,
    service: &'static str,
    region: &'static str,
    unix_secs: u64,
}

fn creds(token: Option<&str>) -> Credentials {
    Credentials {
        access_key_id: AKID.into(),
        secret_access_key: SECRET.into(),
        session_token: token.map(str::to_string),
    }
}

fn ours(c: &Case) -> Signed {
    let headers: Vec<Header> = c
        .headers
        .iter()
        .map(|(n, v)| Header {
            name: (*n).into(),
            value: v.as_bytes().to_vec(),
        })
        .collect();
    let payload_hash = if c.unsigned {
        UNSIGNED_PAYLOAD.to_string()
    } else {
        hex::encode(Sha256::digest(c.body))
    };
    sign(
        &Input {
            method: c.method,
            scheme: c.scheme,
            authority: c.authority,
            path: c.path,
            query: c.query,
            headers: &headers,
            payload_hash: &payload_hash,
            unix_secs: c.unix_secs,
            service: c.service,
            region: c.region,
        },
        &creds(c.token),
    )
    .unwrap()
}

/// The same request signed by the `aws-sigv4` crate, configured as the AWS SDK does
/// (S3: single encoding, no path normalisation; always `x-amz-content-sha256`).
fn oracle(c: &Case) -> Vec<(String, String)> {
    let identity: Identity =
        AwsCredentials::new(AKID, SECRET, c.token.map(str::to_string), None, "test").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    if SINGLE_ENCODED.contains(&c.service) {
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(c.region)
        .name(c.service)
        .time(UNIX_EPOCH + Duration::from_secs(c.unix_secs))
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let mut uri = format!("{}://{}{}", c.scheme, c.authority, c.path);
    if !c.query.is_empty() {
        uri.push('?');
        uri.push_str(c.query);
    }
    let body = if c.unsigned {
        SignableBody::UnsignedPayload
    } else {
        SignableBody::Bytes(c.body)
    };
    let req = SignableRequest::new(c.method, uri, c.headers.iter().copied(), body).unwrap();
    let (instructions, _sig) = aws_sign(req, &params).unwrap().into_parts();
    let mut out: Vec<(String, String)> = instructions
        .headers()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        .collect();
    out.sort();
    out
}

fn check(c: &Case) {
    let mut got = ours(c).headers;
    got.sort();
    assert_eq!(
        got,
        oracle(c),
        "{} {}{}?{}",
        c.method,
        c.authority,
        c.path,
        c.query
    );
}

fn base() -> Case {
    Case {
        method: "GET",
        scheme: "https",
        authority: "examplebucket.s3.amazonaws.com",
        path: "/test.txt",
        query: "",
        headers: vec![],
        body: b"",
        unsigned: false,
        token: None,
        service: "s3",
        region: "us-east-1",
        unix_secs: 1_369_353_600, // 2013-05-24T00:00:00Z
    }
}

#[test]
fn dates() {
    assert_eq!(amz_date(0), "19700101T000000Z");
    assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
    assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
    assert_eq!(amz_date(951_827_696), "20000229T123456Z");
    assert_eq!(amz_date(4_102_444_799), "20991231T235959Z");
}

#[test]
fn hosts_drop_default_ports() {
    assert_eq!(host_of("https", "s3.amazonaws.com:443"), "s3.amazonaws.com");
    assert_eq!(host_of("http", "localhost:80"), "localhost");
    assert_eq!(host_of("http", "localhost:9000"), "localhost:9000");
    assert_eq!(host_of("https", "localhost:80"), "localhost:80");
    assert_eq!(host_of("http", "[::1]:8080"), "[::1]:8080");
}

#[test]
fn aws_documented_s3_examples() {
    // "GET Bucket Lifecycle" and "GET Bucket (List Objects)" from the S3 documentation
    // of header-based SigV4 (credentials AKIAIOSFODNN7EXAMPLE / wJalrXUtnFEMI/…).
    let docs = Credentials {
        access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        session_token: None,
    };
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    for (query, canonical_query, signature) in [
        (
            "lifecycle",
            "lifecycle=",
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
        ),
        (
            "max-keys=2&prefix=J",
            "max-keys=2&prefix=J",
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        ),
    ] {
        let signed = sign(
            &Input {
                method: "GET",
                scheme: "https",
                authority: "examplebucket.s3.amazonaws.com",
                path: "/",
                query,
                headers: &[],
                payload_hash: empty,
                unix_secs: 1_369_353_600,
                service: "s3",
                region: "us-east-1",
            },
            &docs,
        )
        .unwrap();
        assert_eq!(
            signed.canonical_request,
            format!(
                "GET\n/\n{canonical_query}\nhost:examplebucket.s3.amazonaws.com\nx-amz-content-sha256:{empty}\nx-amz-date:20130524T000000Z\n\nhost;x-amz-content-sha256;x-amz-date\n{empty}"
            )
        );
        assert_eq!(signed.signature, signature, "{query}");
    }
    check(&base());
}

#[test]
fn get_with_a_query_needing_encoding() {
    check(&Case {
        path: "/my-bucket/some%20key/a:b",
        query: "prefix=a%20b+c&list-type=2&delimiter=%2F&x=~&empty&k=&u=%C3%A9t%C3%A9&star=*&a=2&a=1",
        ..base()
    });
    check(&Case {
        service: "execute-api",
        region: "eu-west-1",
        authority: "abc123.execute-api.eu-west-1.amazonaws.com",
        path: "/prod/items/a%2Fb/it's(1)",
        query: "q=hello%20world&sort=-date&filter=a:b,c",
        ..base()
    });
}

#[test]
fn post_with_a_signed_body_and_session_token() {
    check(&Case {
        method: "POST",
        service: "dynamodb",
        region: "us-west-2",
        authority: "dynamodb.us-west-2.amazonaws.com",
        path: "/",
        headers: vec![
            ("X-Amz-Target", "  DynamoDB_20120810.PutItem  "),
            ("x-amz-meta-note", "a   b"),
        ],
        body: br#"{"TableName":"t","Item":{"id":{"S":"1"}}}"#,
        token: Some("FQoGZXIvYXdzEJr//////////wEaDGV4YW1wbGUtdG9rZW4="),
        unix_secs: 1_700_000_000,
        ..base()
    });
}

#[test]
fn unsigned_payload_with_ports_and_repeated_headers() {
    check(&Case {
        method: "PUT",
        scheme: "http",
        authority: "localhost:9000",
        path: "/bucket/big%2Bfile.bin",
        headers: vec![("x-amz-meta-tag", "one"), ("X-Amz-Meta-Tag", "two")],
        unsigned: true,
        token: Some("session-token"),
        unix_secs: 1_700_000_123,
        ..base()
    });
    check(&Case {
        authority: "examplebucket.s3.amazonaws.com:443",
        unsigned: true,
        ..base()
    });
}

#[test]
fn agent_amz_headers_are_replaced_not_trusted() {
    let c = Case {
        headers: vec![
            ("x-amz-date", "19990101T000000Z"),
            ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
            ("x-amz-security-token", "agent-token"),
        ],
        ..base()
    };
    let mut headers: Vec<Header> = c
        .headers
        .iter()
        .map(|(n, v)| Header {
            name: (*n).into(),
            value: v.as_bytes().to_vec(),
        })
        .chain([Header {
            name: "X-Other".into(),
            value: b"kept".to_vec(),
        }])
        .collect();
    drop_reserved(&mut headers);
    assert_eq!(headers.len(), 1);
    assert_eq!(headers[0].name, "X-Other");
    let signed = ours(&c);
    let get = |n: &str| {
        signed
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("x-amz-date"), Some("20130524T000000Z"));
    assert_eq!(
        get("x-amz-content-sha256"),
        Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    assert_eq!(get("x-amz-security-token"), None);
    assert!(!signed.canonical_request.contains("agent-token"));
    assert!(!signed.canonical_request.contains("19990101"));
    check(&Case {
        headers: vec![],
        ..c
    });
}

#[test]
fn signature_changes_with_every_input() {
    let reference = ours(&base()).signature;
    for c in [
        Case {
            method: "HEAD",
            ..base()
        },
        Case {
            path: "/test2.txt",
            ..base()
        },
        Case {
            query: "a=1",
            ..base()
        },
        Case {
            body: b"x",
            ..base()
        },
        Case {
            unsigned: true,
            ..base()
        },
        Case {
            token: Some("t"),
            ..base()
        },
        Case {
            region: "eu-west-1",
            ..base()
        },
        Case {
            unix_secs: 1_369_353_601,
            ..base()
        },
        Case {
            authority: "other.s3.amazonaws.com",
            ..base()
        },
    ] {
        assert_ne!(ours(&c).signature, reference);
    }
}

#[test]
fn config_checks() {
    let err = |json: &str| match settings(&Config::parse(json, WHO).unwrap()) {
        Err(Error::Config(m)) => m,
        other => panic!("{json}: {other:?}"),
    };
    let ok = r#"{"service":"s3","region":"us-east-1","access_key_id_env":"A","secret_access_key_env":"S"}"#;
    let s = settings(&Config::parse(ok, WHO).unwrap()).unwrap();
    assert_eq!(
        s,
        Settings {
            service: "s3".into(),
            region: "us-east-1".into(),
            session_token_env: None,
            unsigned_payload: false
        }
    );
    assert_eq!(
        err(r#"{"region":"us-east-1","access_key_id_env":"A","secret_access_key_env":"S"}"#),
        "AwsSigV4Auth: 'service' config field is required."
    );
    assert!(err(r#"{"service":"S3","region":"us-east-1","access_key_id_env":"A","secret_access_key_env":"S"}"#).contains("lower-case"));
    assert!(err(r#"{"service":"s3","region":"us-east-1","access_key_id_env":"A","secret_access_key_env":"S","unsigned_payload":"yes"}"#).contains("true or false"));
    assert!(err(r#"{"service":"s3","region":"us-east-1","access_key_id_env":"A","secret_access_key_env":"S","sesion_token_env":"T"}"#).contains("did you mean 'session_token_env'"));
}
