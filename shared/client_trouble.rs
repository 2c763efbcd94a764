//! Why a connection to a master failed, in words a person can act on, when the cause is
//! this setup (a certificate, a CA, a scheme) rather than the network: such a failure
//! does not pass by retrying, so programs stop with the message instead.

/// The message for a connection to `url` that failed with `err` (any error whose chain
/// of sources reaches the TLS or HTTP/2 layer), if its cause is the setup.
pub fn setup_trouble(err: &(dyn std::error::Error + 'static), url: &str) -> Option<String> {
    let mut causes = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        causes.push(e.to_string());
        next = e.source();
    }
    let chain = causes.join(": ");
    let host = host_of(url);
    let tls = url.starts_with("https://");
    if chain.contains("CaUsedAsEndEntity") {
        return Some(format!(
            "{url} presents a CA certificate (CA:TRUE, as a one-line `openssl req -x509` \
             makes) as its server certificate, which TLS refuses. Make a CA and a server \
             certificate signed by it: `herd-master tls init --name {host}`, start the \
             master with the master.crt and master.key it writes, and give clients its \
             ca.crt with --ca"
        ));
    }
    if chain.contains("UnknownIssuer") {
        return Some(format!(
            "{url}'s certificate is not signed by the CA given with --ca: give the CA that \
             signed it (`herd-master tls init` wrote it as ca.crt beside the master's \
             certificate)"
        ));
    }
    let marker = "certificate not valid for name";
    if let Some(cause) = causes.iter().rev().find(|c| c.contains(marker)) {
        let detail = &cause[cause.find(marker).unwrap_or(0)..];
        return Some(format!(
            "{url}'s certificate does not name {host} ({detail}): reach the master by a \
             name its certificate holds, or make one that holds this name: \
             `herd-master tls init --name {host}`"
        ));
    }
    if chain.contains("Expired") {
        return Some(format!(
            "{url}'s certificate has expired: make a new one (`herd-master tls init` in a \
             new --dir)"
        ));
    }
    if tls && (chain.contains("InvalidContentType") || chain.contains("corrupt message")) {
        return Some(format!(
            "{url} does not speak TLS: use http://{host}:PORT without --ca, or start the \
             master with --tls-cert and --tls-key"
        ));
    }
    // A TLS server's alert, read as an HTTP/2 frame.
    if !tls && chain.contains("frame with invalid size") {
        return Some(format!(
            "{url} answered, but not in plain HTTP/2: the master uses TLS (--tls-cert), so \
             use https://{host}:PORT and give its CA with --ca"
        ));
    }
    None
}

/// A likely cause of a connection to `url` that failed with `err`, when it may also be
/// the network's: a plain `http://` connection closed the moment it opened is what a
/// master speaking TLS does to it.
pub fn hint(err: &(dyn std::error::Error + 'static), url: &str) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if url.starts_with("http://")
            && (text.contains("broken pipe") || text.contains("reset by peer"))
        {
            return Some(format!(
                "{url} closed the connection as it opened: a master that uses TLS \
                 (--tls-cert) does that to plain http://; then use https://{}:PORT and --ca",
                host_of(url)
            ));
        }
        next = e.source();
    }
    None
}

/// The host of a URL, for messages.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);

    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    fn chain(outer: &'static str, inner: &'static str) -> Chain {
        Chain(outer, Some(Box::new(Chain(inner, None))))
    }

    #[test]
    fn each_setup_mistake_is_named_with_its_fix() {
        let url = "https://master.example.com:50051";
        let cases = [
            (
                "invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))",
                "herd-master tls init --name master.example.com",
            ),
            (
                "invalid peer certificate: UnknownIssuer",
                "not signed by the CA given with --ca",
            ),
            (
                "received corrupt message of type InvalidContentType",
                "does not speak TLS",
            ),
        ];
        for (inner, expected) in cases {
            let text = setup_trouble(&chain("transport error", inner), url).expect(inner);
            assert!(text.contains(expected), "{text}");
        }
        let name = chain(
            "transport error",
            "invalid peer certificate: certificate not valid for name \"10.0.0.9\"; certificate is only valid for DnsName(\"localhost\")",
        );
        let text = setup_trouble(&name, "https://10.0.0.9:50051").unwrap();
        assert!(text.contains("does not name 10.0.0.9"), "{text}");
        assert!(
            text.contains("only valid for DnsName(\"localhost\")"),
            "{text}"
        );
        // The network's trouble passes: it is not the setup's.
        let refused = chain("transport error", "Connection refused (os error 111)");
        assert_eq!(setup_trouble(&refused, url), None);
        assert_eq!(host_of("https://[::1]:50051"), "::1");
        assert_eq!(host_of("http://localhost:1/x"), "localhost");
    }
}
