//! A throw-away TLS setup for the etcd tests, made with openssl: a CA, a server certificate for
//! 127.0.0.1 and a client certificate.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{ensure, Context as _};

/// Files of a TLS setup generated with openssl: a CA, etcd's certificate for 127.0.0.1, a client
/// certificate.
pub struct Certs {
    /// The CA's certificate, which both sides trust.
    pub ca: PathBuf,
    /// etcd's certificate, for 127.0.0.1 and localhost.
    pub server_cert: PathBuf,
    /// etcd's key.
    pub server_key: PathBuf,
    /// The client's certificate (as calico-node's).
    pub client_cert: PathBuf,
    /// The client's key.
    pub client_key: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
pub fn make_certs(dir: &Path) -> anyhow::Result<Certs> {
    let certs = Certs {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    let ca_key = dir.join("ca-key.pem");
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("running openssl")?;
        ensure!(
            output.status.success(),
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    let path = |p: &Path| p.to_string_lossy().into_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &path(&ca_key),
        "-out",
        &path(&certs.ca),
        "-days",
        "2",
        "-subj",
        "/CN=dataplane test CA",
    ])?;
    for (cert, key, name, usage) in [
        (&certs.server_cert, &certs.server_key, "etcd", "serverAuth"),
        (&certs.client_cert, &certs.client_key, "calico-node", "clientAuth"),
    ] {
        let csr = dir.join(format!("{name}.csr"));
        let ext = dir.join(format!("{name}.ext"));
        fs::write(
            &ext,
            format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n\
                 basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            ),
        )
        .context("writing the certificate extensions")?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &path(key),
            "-out",
            &path(&csr),
            "-subj",
            &format!("/CN={name}"),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path(&csr),
            "-CA",
            &path(&certs.ca),
            "-CAkey",
            &path(&ca_key),
            "-CAcreateserial",
            "-out",
            &path(cert),
            "-days",
            "2",
            "-extfile",
            &path(&ext),
        ])?;
    }
    Ok(certs)
}
