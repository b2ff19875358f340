//! Endpoint resolution for Kinesis Video Streams (control plane) and Kinesis Data Streams.
//!
//! Precedence: the configuration's override > `AWS_ENDPOINT_URL_KINESIS_VIDEO` /
//! `AWS_ENDPOINT_URL_KINESIS` > `AWS_ENDPOINT_URL` > the standard regional host. Environment
//! overrides are ignored when `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`.
//!
//! Invariants: every returned URL is absolute, has no trailing `/` and no query; plain `http`
//! is accepted only for loopback hosts (127.0.0.0/8, ::1, localhost) so credentials-bearing
//! requests never leave the machine unencrypted.

use std::net::{IpAddr, Ipv6Addr};

use reqwest::Url;

use super::sign::Service;

/// Global endpoint override variable.
pub const ENDPOINT_URL_ENV: &str = "AWS_ENDPOINT_URL";
/// Disables the environment endpoint overrides when `true`.
pub const IGNORE_ENDPOINT_URLS_ENV: &str = "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS";
/// Selects FIPS endpoints when `true`.
pub const USE_FIPS_ENV: &str = "AWS_USE_FIPS_ENDPOINT";
/// Selects dual-stack (IPv4 + IPv6) endpoints when `true`.
pub const USE_DUALSTACK_ENV: &str = "AWS_USE_DUALSTACK_ENDPOINT";

/// Why no endpoint could be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The region is empty or contains characters a region cannot have.
    #[error("region {region:?} is not a valid AWS region name")]
    InvalidRegion {
        /// The region as given.
        region: String,
    },
    /// An override is not an absolute http(s) URL.
    #[error("endpoint {url:?} from {origin} is not a valid http(s) URL: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Where it came from (configuration or the variable's name).
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// Plain http to a host that is not loopback.
    #[error(
        "endpoint {url:?} from {origin} uses plain http to a non-loopback host; use https \
         (http is allowed only for 127.0.0.0/8, ::1 and localhost)"
    )]
    InsecureHttp {
        /// The URL as given.
        url: String,
        /// Where it came from.
        origin: String,
    },
}

/// Endpoint options beyond the region: FIPS and dual-stack variants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Use the `<service>-fips` hosts.
    pub fips: bool,
    /// Use the dual-stack (`api.aws`) hosts.
    pub dual_stack: bool,
}

impl Endpoints {
    /// FIPS and dual-stack as `AWS_USE_FIPS_ENDPOINT` / `AWS_USE_DUALSTACK_ENDPOINT` say.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            fips: env_flag(env, USE_FIPS_ENV),
            dual_stack: env_flag(env, USE_DUALSTACK_ENV),
        }
    }

    /// The endpoint URL for `service` in `region`, applying overrides by precedence. The FIPS
    /// variant is used when `self.fips`, when `AWS_USE_FIPS_ENDPOINT=true`, or when the region
    /// name is a FIPS pseudo-region (`fips-us-east-1`, `us-east-1-fips`).
    pub fn resolve(
        &self,
        service: Service,
        region: &str,
        config_override: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, EndpointError> {
        if let Some(url) = config_override.map(str::trim).filter(|u| !u.is_empty()) {
            return validate_override(url, "the configuration");
        }
        if !env_flag(env, IGNORE_ENDPOINT_URLS_ENV) {
            for var in [service.endpoint_env_var(), ENDPOINT_URL_ENV] {
                if let Some(url) = env(var)
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty())
                {
                    return validate_override(&url, var);
                }
            }
        }
        let env_options = Self::from_env(env);
        let (base_region, fips_region) = split_fips(region);
        validate_region(base_region, region)?;
        let fips = self.fips || env_options.fips || fips_region;
        let dual_stack = self.dual_stack || env_options.dual_stack;
        let prefix = service.endpoint_prefix();
        let fips_suffix = if fips { "-fips" } else { "" };
        let domain = dns_suffix(base_region, dual_stack);
        Ok(format!(
            "https://{prefix}{fips_suffix}.{base_region}.{domain}"
        ))
    }
}

/// [`Endpoints::resolve`] with no FIPS/dual-stack flag beyond what the region name and the
/// environment say.
pub fn resolve_endpoint(
    service: Service,
    region: &str,
    config_override: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, EndpointError> {
    Endpoints::default().resolve(service, region, config_override, env)
}

/// The region to put in the SigV4 credential scope: FIPS pseudo-regions sign as their base
/// region (`fips-us-east-1` → `us-east-1`).
pub fn signing_region(region: &str) -> &str {
    split_fips(region).0
}

/// Whether `url`'s host is loopback: 127.0.0.0/8, ::1 (or an IPv4-mapped 127.x) or `localhost`.
/// False for anything that does not parse as an absolute URL.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(parsed) = Url::parse(url) else {
        return false;
    };
    let Some(host) = parsed.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => is_loopback_ipv6(ip),
        Err(_) => bare.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
    }
}

fn is_loopback_ipv6(ip: Ipv6Addr) -> bool {
    ip.is_loopback()
        || ip
            .to_ipv4_mapped()
            .is_some_and(|v4| IpAddr::V4(v4).is_loopback())
}

fn env_flag(env: &dyn Fn(&str) -> Option<String>, name: &str) -> bool {
    env(name).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// `(base region, is a FIPS pseudo-region)`.
fn split_fips(region: &str) -> (&str, bool) {
    let region = region.trim();
    if let Some(base) = region.strip_prefix("fips-") {
        (base, true)
    } else if let Some(base) = region.strip_suffix("-fips") {
        (base, true)
    } else {
        (region, false)
    }
}

fn validate_region(base: &str, as_given: &str) -> Result<(), EndpointError> {
    let valid = !base.is_empty()
        && base.len() <= 63
        && base
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !base.starts_with('-')
        && !base.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(EndpointError::InvalidRegion {
            region: as_given.to_owned(),
        })
    }
}

/// The partition's DNS suffix for a region.
fn dns_suffix(region: &str, dual_stack: bool) -> &'static str {
    let china = region.starts_with("cn-");
    match (china, dual_stack) {
        (true, false) => "amazonaws.com.cn",
        (true, true) => "api.amazonwebservices.com.cn",
        (false, _) if region.starts_with("us-isob-") => "sc2s.sgov.gov",
        (false, _) if region.starts_with("us-iso-") => "c2s.ic.gov",
        (false, false) => "amazonaws.com",
        (false, true) => "api.aws",
    }
}

fn validate_override(url: &str, origin: &str) -> Result<String, EndpointError> {
    let invalid = |reason: &str| EndpointError::InvalidUrl {
        url: url.to_owned(),
        origin: origin.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    if parsed.host().is_none() {
        return Err(invalid("it has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("it must not have a query or fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("it must not carry user info"));
    }
    match parsed.scheme() {
        "https" => {}
        "http" if is_loopback_url(url) => {}
        "http" => {
            return Err(EndpointError::InsecureHttp {
                url: url.to_owned(),
                origin: origin.to_owned(),
            });
        }
        other => return Err(invalid(&format!("scheme {other:?} is not http or https"))),
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    #[test]
    fn standard_hosts_table() {
        let none = env_of(&[]);
        let table = [
            (
                Service::KinesisVideo,
                "us-west-2",
                "https://kinesisvideo.us-west-2.amazonaws.com",
            ),
            (
                Service::Kinesis,
                "us-west-2",
                "https://kinesis.us-west-2.amazonaws.com",
            ),
            (
                Service::KinesisVideo,
                "cn-north-1",
                "https://kinesisvideo.cn-north-1.amazonaws.com.cn",
            ),
            (
                Service::Kinesis,
                "cn-northwest-1",
                "https://kinesis.cn-northwest-1.amazonaws.com.cn",
            ),
            (
                Service::KinesisVideo,
                "fips-us-east-1",
                "https://kinesisvideo-fips.us-east-1.amazonaws.com",
            ),
            (
                Service::Kinesis,
                "us-gov-west-1-fips",
                "https://kinesis-fips.us-gov-west-1.amazonaws.com",
            ),
            (
                Service::Kinesis,
                "us-iso-east-1",
                "https://kinesis.us-iso-east-1.c2s.ic.gov",
            ),
        ];
        for (service, region, expected) in table {
            assert_eq!(
                resolve_endpoint(service, region, None, &none).unwrap(),
                expected,
                "{service:?} {region}"
            );
        }
    }

    #[test]
    fn fips_and_dual_stack_flags() {
        let none = env_of(&[]);
        let fips = Endpoints {
            fips: true,
            dual_stack: false,
        };
        assert_eq!(
            fips.resolve(Service::Kinesis, "us-east-1", None, &none)
                .unwrap(),
            "https://kinesis-fips.us-east-1.amazonaws.com"
        );
        let env_fips = env_of(&[("AWS_USE_FIPS_ENDPOINT", "true")]);
        assert_eq!(
            resolve_endpoint(Service::KinesisVideo, "us-west-2", None, &env_fips).unwrap(),
            "https://kinesisvideo-fips.us-west-2.amazonaws.com"
        );
        let env_off = env_of(&[("AWS_USE_FIPS_ENDPOINT", "false")]);
        assert_eq!(
            resolve_endpoint(Service::KinesisVideo, "us-west-2", None, &env_off).unwrap(),
            "https://kinesisvideo.us-west-2.amazonaws.com"
        );
        let dual = env_of(&[("AWS_USE_DUALSTACK_ENDPOINT", "true")]);
        assert_eq!(
            resolve_endpoint(Service::Kinesis, "eu-west-1", None, &dual).unwrap(),
            "https://kinesis.eu-west-1.api.aws"
        );
        assert_eq!(
            resolve_endpoint(Service::Kinesis, "cn-north-1", None, &dual).unwrap(),
            "https://kinesis.cn-north-1.api.amazonwebservices.com.cn"
        );
        assert_eq!(signing_region("fips-us-east-1"), "us-east-1");
        assert_eq!(signing_region("us-gov-west-1-fips"), "us-gov-west-1");
        assert_eq!(signing_region("eu-west-1"), "eu-west-1");
    }

    #[test]
    fn override_precedence() {
        let all = env_of(&[
            ("AWS_ENDPOINT_URL_KINESIS_VIDEO", "https://kvs.example.com/"),
            ("AWS_ENDPOINT_URL_KINESIS", "https://kds.example.com"),
            ("AWS_ENDPOINT_URL", "https://global.example.com"),
        ]);
        assert_eq!(
            resolve_endpoint(
                Service::KinesisVideo,
                "us-west-2",
                Some("http://127.0.0.1:4566/"),
                &all
            )
            .unwrap(),
            "http://127.0.0.1:4566"
        );
        assert_eq!(
            resolve_endpoint(Service::KinesisVideo, "us-west-2", None, &all).unwrap(),
            "https://kvs.example.com"
        );
        assert_eq!(
            resolve_endpoint(Service::Kinesis, "us-west-2", None, &all).unwrap(),
            "https://kds.example.com"
        );
        let global = env_of(&[("AWS_ENDPOINT_URL", "https://global.example.com/prefix/")]);
        assert_eq!(
            resolve_endpoint(Service::Kinesis, "us-west-2", None, &global).unwrap(),
            "https://global.example.com/prefix"
        );
        let ignored = env_of(&[
            ("AWS_ENDPOINT_URL", "https://global.example.com"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ]);
        assert_eq!(
            resolve_endpoint(Service::Kinesis, "us-west-2", None, &ignored).unwrap(),
            "https://kinesis.us-west-2.amazonaws.com"
        );
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let none = env_of(&[]);
        for ok in [
            "http://127.0.0.1:4566",
            "http://127.8.9.10",
            "http://localhost:8080",
            "http://[::1]:4567",
        ] {
            assert!(
                resolve_endpoint(Service::Kinesis, "us-west-2", Some(ok), &none).is_ok(),
                "{ok}"
            );
        }
        let err = resolve_endpoint(
            Service::Kinesis,
            "us-west-2",
            Some("http://10.0.0.1:4566"),
            &none,
        )
        .unwrap_err();
        assert!(matches!(err, EndpointError::InsecureHttp { .. }), "{err}");
        assert!(err.to_string().contains("10.0.0.1"));
        let env = env_of(&[("AWS_ENDPOINT_URL_KINESIS", "http://kinesis.example.com")]);
        let err = resolve_endpoint(Service::Kinesis, "us-west-2", None, &env).unwrap_err();
        assert!(
            err.to_string().contains("AWS_ENDPOINT_URL_KINESIS"),
            "{err}"
        );
        assert!(
            resolve_endpoint(
                Service::Kinesis,
                "us-west-2",
                Some("https://10.0.0.1:443"),
                &none
            )
            .is_ok()
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let none = env_of(&[]);
        for region in ["", "US-WEST-2", "us-west-2/../x", "us west", "-us"] {
            assert!(
                matches!(
                    resolve_endpoint(Service::Kinesis, region, None, &none),
                    Err(EndpointError::InvalidRegion { .. })
                ),
                "{region:?}"
            );
        }
        for url in [
            "kinesis.example.com",
            "ftp://x.example.com",
            "https://h.example.com/?a=b",
            "https://user:pw@h.example.com",
        ] {
            assert!(
                matches!(
                    resolve_endpoint(Service::Kinesis, "us-west-2", Some(url), &none),
                    Err(EndpointError::InvalidUrl { .. })
                ),
                "{url}"
            );
        }
    }

    proptest::proptest! {
        /// Arbitrary regions and overrides give a URL or an error, never a panic; every URL
        /// returned is https or loopback http without a trailing slash.
        #[test]
        fn resolution_is_total(region in "\\PC{0,40}", url in proptest::option::of("(https?|ftp)://\\PC{0,40}")) {
            let none = env_of(&[]);
            if let Ok(resolved) = resolve_endpoint(Service::KinesisVideo, &region, url.as_deref(), &none) {
                proptest::prop_assert!(!resolved.ends_with('/'));
                proptest::prop_assert!(resolved.starts_with("https://") || is_loopback_url(&resolved), "{resolved}");
            }
        }
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_url("http://127.0.0.1:1/"));
        assert!(is_loopback_url("https://LOCALHOST"));
        assert!(is_loopback_url("http://[::ffff:127.0.0.1]/"));
        assert!(!is_loopback_url("http://10.0.0.1/"));
        assert!(!is_loopback_url("http://localhost.example.com/"));
        assert!(!is_loopback_url("http://[::2]/"));
        assert!(!is_loopback_url("not a url"));
    }
}
