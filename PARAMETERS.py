# PARAMETERS.py: the one file a user edits. Every script reads it.
#
# Plain assignments only. Each value is checked when a script starts (type and
# allowed values); every script also takes overrides on the command line,
# e.g.  python scripts/4_trainSVM.py --datasetName=myData --svm_cvFolds=3
# and lists what it uses with --help.

# --- Data --------------------------------------------------------------------
# Images live in <rootDir>/images/<datasetName>/<class>/*.jpg; intermediate
# files go to <rootDir>/proc/<datasetName>/, plots and metrics to
# <rootDir>/results/<datasetName>/. A custom dataset is this one change.
datasetName = "tuxpaintStamps"
rootDir = "data"                 # relative to this file's folder

classifier = "svm"               # 'svm' | 'dnn' | 'svmDnnRefined'
ratioTrainTest = 0.75            # per class: 75% train, 25% test
imagesSplitBy = "filename"       # 'filename' | 'subdir' (keep a class's subfolders whole)
randomSeed = 0                   # seeds the split, the CV folds and training

# --- Pretrained DNN and its refinement ----------------------------------------
# 'resnet18' | 'resnet34' | 'resnet50' | 'efficientnet_lite0', or a path to a
# .pth state dict whose name starts with one of them (e.g. resnet18-f37072fd.pth).
# ResNet weights are looked for in resources/models/, then torch hub's cache,
# then downloaded; 'efficientnet_lite0' ships with its pip package (offline).
rf_pretrainedModelFilename = "resnet18"
rf_inputResolution = 224         # input width = height in pixels
rf_resizeMode = "pad"            # 'pad': keep the whole image, pad to square; 'crop': centre crop
rf_dropoutRate = 0.5
rf_mbSize = 16
rf_maxEpochs = 45                # 0 = no refinement
rf_maxTrainImages = 0            # images drawn per epoch; 0 = all
rf_lrPerMb = [0.01] * 20 + [0.001] * 20 + [0.0001]   # per epoch; the last value repeats
rf_momentumPerMb = 0.9
rf_l2RegWeight = 0.0005
rf_boFreezeWeights = False       # True: train only the new last layer
rf_boBalanceTrainingSet = False  # True: draw every class equally often
rf_backboneLrFactor = 1.0        # backbone learning rate = this x rf_lrPerMb (new head: full rate)
rf_validationFraction = 0.1      # of the TRAINING set, held out to pick the best epoch (never the test set)
rf_augRandomCrop = True          # training augmentation: pad with a margin, random crop
rf_augHorizontalFlip = True      # training augmentation: random left-right flip
rf_augColorJitter = 0.2          # training augmentation: brightness/contrast/saturation strength; 0 = off

# --- Linear SVM ---------------------------------------------------------------
svm_CVals = [1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100]   # C is chosen by cross-validation on the training set
svm_boL2Normalize = True
svm_cvFolds = 5
svm_nJobs = -1                   # parallel jobs for the C search; -1 = all cores

# --- Running the DNN ----------------------------------------------------------
run_mbSize = 32                  # featurization batch size
run_device = "auto"              # 'auto' (cuda, then mps, then cpu) | 'cpu' | 'cuda' | 'cuda:N' | 'mps'
run_workers = -1                 # image-decoding processes; -1 = auto, 0 = none
run_precision = "auto"           # 'auto' (bf16 on CPUs with native bf16, fp16 on GPUs, else fp32) | 'fp32' | 'bf16' | 'fp16'

# --- Evaluation ---------------------------------------------------------------
eval_numExampleImages = 24       # test images in the right/wrong examples grid

# --- Downloading images (script 0) --------------------------------------------
download_urlsFile = ""           # TSV 'label<TAB>url'; '' installs the bundled demo images
download_timeoutSeconds = 20.0
download_maxImageSide = 1000     # longer side of downloaded images, in pixels

# --- Scraping new images (Bing) and removing duplicates -----------------------
# scripts/scrapeImages.py searches Bing Image Search for every "<item> <attribute>"
# and saves the top results in images/<datasetName>/<attribute>/. The key is read
# from the environment variable BING_SEARCH_V7_SUBSCRIPTION_KEY, never from a file.
# Bing Search v7 was retired in August 2025: point bing_endpoint at a compatible service.
bing_endpoint = "https://api.bing.microsoft.com/v7.0/images/search"
scrape_items = ["shirt", "pants", "dress", "skirt", "sweater", "scarf", "shoes"]
scrape_attributes = ["striped", "dotted", "leopard"]   # the classes
scrape_queriesFile = ""          # TSV 'label<TAB>query' used instead of items x attributes
scrape_imagesPerQuery = 50       # the top N results of each query are downloaded
scrape_countPerPage = 50         # results per search call (at most 150)
scrape_safeSearch = "Moderate"   # 'Off' | 'Moderate' | 'Strict'
scrape_mkt = "en-US"             # market; '' lets Bing choose
scrape_imageType = "Photo"       # '' | 'Photo' | 'Clipart' | 'Line' | 'Shopping' | 'Transparent' | 'AnimatedGif'
scrape_license = ""              # '' (no filter) | 'Public' | 'Share' | 'ShareCommercially' | 'Modify' | ...
scrape_useThumbnails = False     # True: save Bing's thumbnail when the full image fails
scrape_allowPrivateHosts = False # True: allow URLs on private/loopback/link-local addresses
scrape_timeoutSeconds = 20.0
scrape_maxBytes = 20_000_000     # larger downloads are abandoned
scrape_minSecondsBetweenCalls = 0.5   # per host, the search API included
scrape_maxRetries = 4            # on HTTP 429 and 5xx, waiting Retry-After (else 1, 2, 4, ... s)
# scripts/removeDuplicates.py moves near-duplicates to images/<datasetName>_duplicates/.
dedup_hashSize = 16              # dhash of hash_size x hash_size bits
dedup_maxDistance = 16           # max differing bits of 256 (measured: docs/scraping.md); 0 = identical only
dedup_crossClass = "keepOne"     # same image under 2 classes: 'keepOne' | 'moveAll' | 'report'

# --- Deployment (scripts 6-7) --------------------------------------------------
# scripts/6_deploy.py serves the trained model over HTTP (REST API + a web page at /).
# If the environment variable IMGCLASS_API_KEY is set, requests need the header
# 'Authorization: Bearer <key>' (the key is never written to a file or a log).
deploy_host = "127.0.0.1"        # '0.0.0.0' = every network interface (e.g. inside a container)
deploy_port = 8000
deploy_maxRequestBytes = 20_000_000   # larger requests are refused (HTTP 413)
deploy_maxImages = 16            # more images in one request are refused (HTTP 413)
deploy_topK = 5                  # labels returned per image by /predict and the web page
# scripts/6_callWebservice.py: the client.
deploy_url = ""                  # '' = http://<deploy_host>:<deploy_port>
deploy_clientImage = ""          # '' = a bundled demo image
deploy_clientRepeats = 10        # requests sent, to time the round trip
# scripts/7_batchScore.py: classify every image under a folder into a CSV and a SQLite table.
batch_inputDir = ""              # '' = images/<datasetName>/ ; relative paths: from the current folder
batch_outputCsv = ""             # '' = results/<datasetName>/batchScores.csv
batch_database = ""              # '' = results/<datasetName>/batchScores.sqlite
