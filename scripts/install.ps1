<#
.SYNOPSIS
Installs agent-bootstrap on a Windows VM and registers the machine as an Azure Pipelines agent.

.DESCRIPTION
For a VM custom-script extension (which runs it as SYSTEM) or an elevated prompt. In order:

 1. Checks that it runs elevated (exit 2 otherwise; nothing is downloaded).
 2. Gets the agent-bootstrap release zip from -Url (https://, or a file, e.g. one the extension's
    fileUris downloaded) into a new directory under Program Files, which only administrators can
    change. Downloads are retried on timeouts, 408, 429 and 5xx.
 3. Checks the zip's SHA-256 against -Sha256: on a mismatch nothing is installed (exit 5).
 4. Places agent-bootstrap.exe in "Program Files\agent-bootstrap". The boot task that install
    registers runs it from there as SYSTEM at every boot, so it must sit where only administrators
    can replace it. A running copy (a boot-time reconcile) is renamed aside, not overwritten.
 5. Runs "agent-bootstrap.exe install" with every other argument, unchanged, and exits with its
    exit code (README, "Exit codes").

No secret is involved: agent-bootstrap gets its token from the VM's managed identity at run time.
Logs go to stderr; stdout carries only what agent-bootstrap prints (its summary).

.PARAMETER Url
The release zip: an https:// URL (a storage account URL with a SAS token is fine: only its path is
ever logged), an http:// URL on a loopback host, or the path of a local file.

.PARAMETER Sha256
The zip's SHA-256, 64 hexadecimal digits (published beside each release).

.EXAMPLE
powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File install.ps1 -Url https://example.blob.core.windows.net/tools/agent-bootstrap-0.1.0-x86_64-windows.zip -Sha256 0123...cdef --org myorg --pool Default --log-format json
#>
[CmdletBinding(PositionalBinding = $false)]
param(
    [string] $Url,
    [string] $Sha256,
    # Everything else is passed to "agent-bootstrap install" as it is: its --long flags (--org,
    # --pool, ...); a single-dash word would be taken as one of PowerShell's own parameters.
    [Parameter(ValueFromRemainingArguments = $true)]
    [string[]] $InstallArgs = @()
)

Set-StrictMode -Version 2.0
$ErrorActionPreference = 'Stop'
# Windows PowerShell's progress bar slows Invoke-WebRequest down many times over.
$ProgressPreference = 'SilentlyContinue'

# Exit codes, as agent-bootstrap's own (README, "Exit codes").
$ExitUsage = 2
$ExitPackage = 5
$ExitInternal = 1

$script:Staging = $null

function Write-Log([string] $Message) {
    [Console]::Error.WriteLine("install.ps1: $Message")
}

function Remove-Staging {
    if ($script:Staging -and (Test-Path -LiteralPath $script:Staging)) {
        Remove-Item -LiteralPath $script:Staging -Recurse -Force -ErrorAction SilentlyContinue
    }
}

function Stop-WithError([int] $Code, [string] $Message) {
    Write-Log "error: $Message"
    Remove-Staging
    exit $Code
}

# Anything unexpected: say what, leave nothing half-done, exit 1.
trap {
    Write-Log "error: $_"
    Remove-Staging
    exit $ExitInternal
}

if (-not $Url) { Stop-WithError $ExitUsage '-Url is required: the agent-bootstrap release zip (https URL or file)' }
if (-not $Sha256) { Stop-WithError $ExitUsage '-Sha256 is required: the SHA-256 of the release zip' }
if ($Sha256 -notmatch '^[0-9a-fA-F]{64}$') {
    Stop-WithError $ExitUsage "invalid -Sha256 '$Sha256': expected 64 hexadecimal digits"
}

# 1. Elevation, before anything else: install would refuse later anyway (exit 2), after a download.
$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    Stop-WithError $ExitUsage 'run elevated (as SYSTEM from a custom-script extension, or Run as Administrator): the agent is installed as a Windows service and a boot task'
}

# Where the binary lives: the 64-bit Program Files even from a 32-bit PowerShell.
$programFiles = if ($env:ProgramW6432) { $env:ProgramW6432 } else { $env:ProgramFiles }
$installDir = Join-Path $programFiles 'agent-bootstrap'
if (-not (Test-Path -LiteralPath $installDir)) {
    New-Item -ItemType Directory -Path $installDir | Out-Null
}
$homeItem = Get-Item -LiteralPath $installDir -Force
if (-not $homeItem.PSIsContainer -or ($homeItem.Attributes -band [IO.FileAttributes]::ReparsePoint)) {
    Stop-WithError $ExitInternal "$installDir is not a plain directory (a junction or a file); remove it and run again"
}
# What an interrupted earlier run left: staging directories, binaries renamed aside.
Get-ChildItem -LiteralPath $installDir -Force -Filter '.staging-*' -ErrorAction SilentlyContinue |
    Remove-Item -Recurse -Force -ErrorAction SilentlyContinue
Get-ChildItem -LiteralPath $installDir -Force -Filter '.old-*.exe' -ErrorAction SilentlyContinue |
    Remove-Item -Force -ErrorAction SilentlyContinue

$script:Staging = Join-Path $installDir ('.staging-' + [Guid]::NewGuid().ToString('N'))
New-Item -ItemType Directory -Path $script:Staging | Out-Null
$zip = Join-Path $script:Staging 'agent-bootstrap.zip'

# 2. The zip.
$uri = $null
$isWeb = [Uri]::TryCreate($Url, [UriKind]::Absolute, [ref] $uri) -and ($uri.Scheme -eq 'https' -or $uri.Scheme -eq 'http')
if ($isWeb) {
    # Never log the query: a SAS token is a secret.
    $shown = $uri.GetLeftPart([UriPartial]::Path)
    if ($uri.UserInfo) { Stop-WithError $ExitUsage "invalid -Url ${shown}: credentials in the URL are refused" }
    if ($uri.Scheme -eq 'http' -and -not $uri.IsLoopback) {
        Stop-WithError $ExitUsage "invalid -Url ${shown}: plain http is refused except for loopback hosts; use https"
    }
    # Windows PowerShell 5.1 does not offer TLS 1.2 by default on older systems.
    [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
    $attempts = 6
    for ($attempt = 1; ; $attempt++) {
        try {
            Write-Log "downloading $shown (attempt $attempt of $attempts)"
            Invoke-WebRequest -Uri $uri -OutFile $zip -UseBasicParsing -TimeoutSec 300 -MaximumRedirection 5
            break
        } catch {
            $status = $null
            $response = $_.Exception.PSObject.Properties['Response']
            if ($response -and $response.Value) { $status = [int] $response.Value.StatusCode }
            $message = $_.Exception.Message.Replace($Url, $shown)
            $retryable = ($null -eq $status) -or $status -eq 408 -or $status -eq 429 -or $status -ge 500
            if (-not $retryable -or $attempt -ge $attempts) {
                Stop-WithError $ExitPackage "downloading $shown failed: $message"
            }
            $wait = [Math]::Min(30, [Math]::Pow(2, $attempt)) * (0.5 + (Get-Random -Maximum 0.5))
            Write-Log ("download failed ({0}); retrying in {1:N1} s" -f $message, $wait)
            Start-Sleep -Milliseconds ([int] ($wait * 1000))
        }
    }
} else {
    $path = $Url
    if ($uri -and $uri.Scheme -eq 'file') { $path = $uri.LocalPath }
    if (-not (Test-Path -LiteralPath $path -PathType Leaf)) {
        Stop-WithError $ExitUsage "invalid -Url ${Url}: neither an https URL nor an existing file"
    }
    $shown = $path
    Copy-Item -LiteralPath $path -Destination $zip
}

# 3. The digest, before anything from the zip is used.
$actual = (Get-FileHash -LiteralPath $zip -Algorithm SHA256).Hash
if ($actual -ne $Sha256) {
    Stop-WithError $ExitPackage "$shown has SHA-256 $($actual.ToLowerInvariant()), expected $($Sha256.ToLowerInvariant()); nothing installed"
}
Write-Log "verified $shown (SHA-256 $($actual.ToLowerInvariant()))"

# 4. Into place.
$unpacked = Join-Path $script:Staging 'unpacked'
try {
    Expand-Archive -LiteralPath $zip -DestinationPath $unpacked
} catch {
    Stop-WithError $ExitPackage "extracting ${shown}: $($_.Exception.Message)"
}
$found = @(Get-ChildItem -LiteralPath $unpacked -Recurse -File -Filter 'agent-bootstrap.exe')
if ($found.Count -ne 1) {
    Stop-WithError $ExitPackage "$shown holds $($found.Count) copies of agent-bootstrap.exe; expected exactly one"
}
$exe = Join-Path $installDir 'agent-bootstrap.exe'
$aside = $null
if (Test-Path -LiteralPath $exe) {
    # A running executable can be renamed but not overwritten.
    $aside = Join-Path $installDir ('.old-' + [Guid]::NewGuid().ToString('N') + '.exe')
    Move-Item -LiteralPath $exe -Destination $aside
}
try {
    Move-Item -LiteralPath $found[0].FullName -Destination $exe
} catch {
    if ($aside) { Move-Item -LiteralPath $aside -Destination $exe -ErrorAction SilentlyContinue }
    Stop-WithError $ExitInternal "placing ${exe}: $($_.Exception.Message)"
}
if ($aside) { Remove-Item -LiteralPath $aside -Force -ErrorAction SilentlyContinue }
Remove-Staging
Write-Log "installed $exe"

# 5. The install itself; its exit code is ours.
Write-Log "running: $exe install $($InstallArgs -join ' ')"
& $exe install @InstallArgs
exit $LASTEXITCODE
